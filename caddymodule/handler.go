package caddymodule

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sitegate/sitegate/sitecontext"
	"github.com/sitegate/sitegate/tokens"
)

// maxAuthorization caps the Authorization header before anything parses it.
const maxAuthorization = 8 << 10

// ServeHTTP strips the owned headers, authenticates, injects, and calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	client := r.Header.Values(sitecontext.Header) // read before the strip removes it
	h.owned.strip(r.Header)
	cookieID, twoCookies := takeCookie(r.Header, h.cookie)
	loginState, _ := takeCookie(r.Header, h.cookie+loginCookieSuffix) // the OAuth2 sign-in's state
	if h.Anonymous {
		requests.inc("anonymous")
		return next.ServeHTTP(w, r)
	}
	if g := h.gate; g != nil {
		if twoCookies {
			return h.fail(w, r, errTwoCredentials)
		}
		c, apiErr := g.sessionCredential(r.Header, cookieID)
		if apiErr != nil {
			return h.fail(w, r, apiErr)
		}
		c.loginState = loginState
		if g.isEndpoint(r.URL.Path) {
			return h.serveEndpoint(w, r, c)
		}
		if c.id != "" {
			return h.serveSession(w, r, next, c, client)
		}
	}

	raw, apiErr := bearerToken(r.Header)
	switch {
	case apiErr == errMissingCredentials && h.gate != nil:
		if h.gate.signInRedirect(w, r) {
			requests.inc("sign_in_redirect")
			return nil
		}
		return h.fail(w, r, errSignIn)
	case apiErr != nil:
		return h.fail(w, r, apiErr)
	case h.validator == nil:
		return h.fail(w, r, errBearerRefused)
	}
	id, err := h.validator.Validate(r.Context(), raw)
	if err != nil {
		if c := h.logger.Check(zapcore.DebugLevel, "token refused"); c != nil {
			c.Write(zap.Error(err)) // the validator's errors name no token or claim
		}
		switch {
		case errors.Is(err, tokens.ErrExpired):
			return h.fail(w, r, errTokenExpired)
		case errors.Is(err, tokens.ErrNotReady), errors.Is(err, tokens.ErrUnavailable):
			return h.fail(w, r, errIdentityDown)
		default:
			return h.fail(w, r, errInvalidToken)
		}
	}

	site, err := h.sites.Build(id.Claims, client)
	switch {
	case errors.Is(err, sitecontext.ErrAccountMismatch):
		return h.fail(w, r, siteContextError(http.StatusForbidden, err))
	case err != nil:
		return h.fail(w, r, siteContextError(http.StatusBadRequest, err))
	}
	h.inject(r, id, site)
	requests.inc("ok")
	return next.ServeHTTP(w, r)
}

// bearerToken returns the token of the request's one Authorization header, parsed strictly:
// scheme Bearer (any case), one space, then RFC 6750 b64token characters. The body and the query
// are never searched for a token.
func bearerToken(h http.Header) (string, *apiError) {
	values := h.Values("Authorization")
	switch {
	case len(values) == 0:
		return "", errMissingCredentials
	case len(values) > 1:
		return "", errTwoCredentials
	case len(values[0]) > maxAuthorization:
		return "", errInvalidRequest
	}
	if strings.TrimSpace(values[0]) == "" {
		return "", errMissingCredentials
	}
	scheme, token, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", errUnsupportedScheme
	}
	if !b64token(token) {
		return "", errInvalidRequest
	}
	return token, nil
}

// b64token reports whether s is an RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~"
// / "+" / "/" ) *"=".
func b64token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		if !b64tokenChars[body[i]] {
			return false
		}
	}
	return true
}

var b64tokenChars = func() (t [256]bool) {
	for _, c := range []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/") {
		t[c] = true
	}
	return t
}()

// setIdentity sets caddyauth's placeholders: {http.auth.user.id}, {http.auth.user.account} and,
// looked up only when used, {http.auth.user.<claim>} for every claim of the token.
func setIdentity(repl *caddy.Replacer, id *tokens.Identity, account string) {
	repl.Set("http.auth.user.id", id.Subject)
	if account != "" {
		repl.Set("http.auth.user.account", account)
	}
	const prefix = "http.auth.user."
	repl.Map(func(key string) (any, bool) {
		if !strings.HasPrefix(key, prefix) {
			return nil, false
		}
		v, ok := id.Claims[key[len(prefix):]]
		return v, ok
	})
}

// headerValue makes a placeholder result safe as a header value: control characters (claims can
// hold CR and LF) and non-ASCII are escaped Go-style, so the value stays one line.
func headerValue(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			q := strconv.QuoteToASCII(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}
