package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// apiError is an error sitegate answers itself, in fabric's APIError shape:
// {"error": CODE, "code": "<status>", "message": …}. Messages are fixed texts: never a token, a
// claim or anything else the client sent.
type apiError struct {
	status  int
	code    string
	message string
	// outcome is the requests_total label.
	outcome string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// The gateway's errors (design.md, Errors).
var (
	errMissingCredentials = &apiError{http.StatusUnauthorized, "MISSING_CREDENTIALS", "A bearer token is required.", "missing_credentials"}
	errInvalidToken       = &apiError{http.StatusUnauthorized, "INVALID_TOKEN", "The access token is invalid.", "invalid_token"}
	errTokenExpired       = &apiError{http.StatusUnauthorized, "TOKEN_EXPIRED", "The access token has expired.", "token_expired"}
	errUnsupportedScheme  = &apiError{http.StatusUnauthorized, "INVALID_TOKEN", "The Authorization scheme is not supported; use Bearer.", "invalid_token"}
	errInvalidRequest     = &apiError{http.StatusBadRequest, "INVALID_REQUEST", "The Authorization header is malformed.", "invalid_request"}
	errTwoCredentials     = &apiError{http.StatusBadRequest, "INVALID_REQUEST", "More than one credential was presented.", "invalid_request"}
	errIdentityDown       = &apiError{http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE", "Identity cannot be reached to check the credentials; retry later.", "identity_unavailable"}
	errNoServiceToken     = &apiError{http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE", "No valid service token: Identity cannot be reached; retry later.", "identity_unavailable"}

	errSignIn         = &apiError{http.StatusUnauthorized, "MISSING_CREDENTIALS", "Sign in, or present a bearer token.", "missing_credentials"}
	errBearerRefused  = &apiError{http.StatusUnauthorized, "INVALID_TOKEN", "Bearer tokens are not accepted here; sign in.", "invalid_token"}
	errSessionExpired = &apiError{http.StatusUnauthorized, "SESSION_EXPIRED", "The session has ended; sign in again.", "session_expired"}
	errStoreDown      = &apiError{http.StatusServiceUnavailable, "SESSION_STORE_UNAVAILABLE", "Sessions cannot be read right now; retry later.", "store_unavailable"}
	errLoginFailed    = &apiError{http.StatusUnauthorized, "LOGIN_FAILED", "Sign-in failed.", "login_failed"}
	errBadLogin       = &apiError{http.StatusBadRequest, "INVALID_REQUEST", "The body must be JSON: {\"username\": …, \"password\": …}.", "invalid_request"}
	errContentType    = &apiError{http.StatusUnsupportedMediaType, "INVALID_REQUEST", "The body must be application/json.", "invalid_request"}
	errCrossSite      = &apiError{http.StatusForbidden, "CROSS_SITE_REQUEST", "Cross-site requests to this endpoint are refused.", "cross_site"}
	errNoEndpoint     = &apiError{http.StatusNotFound, "NOT_FOUND", "No such sitegate endpoint.", "not_found"}
	errMethod         = &apiError{http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "This endpoint does not take this method.", "method_not_allowed"}
	// errClientGone: the client went away while sitegate waited on its behalf (nginx's 499).
	errClientGone = &apiError{499, "CLIENT_CLOSED_REQUEST", "The client closed the request.", "client_gone"}
)

// siteContextError is a 400 or 403 about x-site-context; its message is the sitecontext package's
// reason, which names no client data beyond account ids.
func siteContextError(status int, err error) *apiError {
	if status == http.StatusForbidden {
		return &apiError{status, "ACCOUNT_MISMATCH", err.Error(), "account_mismatch"}
	}
	return &apiError{status, "INVALID_SITE_CONTEXT", err.Error(), "invalid_site_context"}
}

// retryAfter is the Retry-After of 503 answers, in seconds.
const retryAfter = 5

// fail answers e: a 401 carries an RFC 6750 challenge, a 503 a Retry-After. By default sitegate
// writes the APIError body itself; with use_handle_errors it returns the error to Caddy instead,
// so handle_errors routes render it, with {http.sitegate.error.code} and
// {http.sitegate.error.message} set.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, e *apiError) error {
	requests.inc(e.outcome)
	return respond(w, r, e, h.UseHandleErrors, retryAfter)
}

// respond answers e (see fail); retry is the Retry-After of a 503, in seconds.
func respond(w http.ResponseWriter, r *http.Request, e *apiError, handleErrors bool, retry int) error {
	switch e.status {
	case http.StatusUnauthorized:
		challenge := `Bearer realm="sitegate"`
		if e.code == "INVALID_TOKEN" || e.code == "TOKEN_EXPIRED" { // RFC 6750 errors are about bearer tokens
			challenge += fmt.Sprintf(`, error="invalid_token", error_description=%q`, e.message)
		}
		w.Header().Set("WWW-Authenticate", challenge)
	case http.StatusBadRequest:
		if e == errInvalidRequest || e == errTwoCredentials { // about the credentials, not a body or a redirect target
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="sitegate", error="invalid_request", error_description=%q`, e.message))
		}
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", strconv.Itoa(retry))
	}
	if handleErrors {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		repl.Set("http.sitegate.error.code", e.code)
		repl.Set("http.sitegate.error.message", e.message)
		return caddyhttp.Error(e.status, errors.New(e.message))
	}
	body, _ := json.Marshal(map[string]string{"error": e.code, "code": strconv.Itoa(e.status), "message": e.message})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
	return nil
}
