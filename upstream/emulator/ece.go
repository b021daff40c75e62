package emulator

import (
	"net/http"
	"net/url"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Elastic Cloud Enterprise style authentication under /api/v1/users/auth (seed 003,
// identity-protocols.md §7). A session is a family of JWTs: login starts it, each _refresh
// exchanges the current token for a new one, _logout revokes them all.

const (
	eceAuthPath   = "/api/v1/users/auth"
	eceRefreshURL = eceAuthPath + "/_refresh"
)

func (e *Emulator) eceRoutes() {
	e.route("POST "+eceAuthPath+"/_login", "ece.login", dialectECE, e.eceLogin)
	e.route("POST "+eceRefreshURL, "ece.refresh", dialectECE, e.eceRefresh)
	e.route("POST "+eceAuthPath+"/_logout", "ece.logout", dialectECE, e.eceLogout)
	e.route("GET "+eceAuthPath, "ece.auth_info", dialectECE, e.eceAuthInfo)
	e.route("GET "+eceAuthPath+"/methods", "ece.methods", dialectECE, e.eceMethods)
}

// eceTokenResponse is ECE's TokenResponse.
type eceTokenResponse struct {
	Token                 string `json:"token"`
	SessionExpirationTime string `json:"session_expiration_time"`
}

func eceTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func eceUnauthorized(w http.ResponseWriter) {
	fail(w, dialectECE, http.StatusUnauthorized, "root.unauthorized", "The authentication token is invalid or expired.")
}

// eceIssue mints a token of session sid for u, with a fresh lifetime.
func (e *Emulator) eceIssue(u *user, sid string) eceTokenResponse {
	e.mu.Lock()
	id, name := u.id, u.username
	e.mu.Unlock()
	now := e.now()
	exp := now.Add(e.cfg.AccessLifetime)
	tok := e.mint(jwt.MapClaims{
		"sub": name, "iss": "ece-emulator", "iat": now.Unix(), "exp": exp.Unix(), "sid": sid,
	}, token{kind: kindECE, userID: id, exp: exp, family: sid})
	return eceTokenResponse{Token: tok, SessionExpirationTime: eceTime(exp)}
}

func (e *Emulator) eceLogin(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Username   string `json:"username"`
		Password   string `json:"password"`
		LoginState *struct {
			Path string `json:"path"`
		} `json:"login_state"`
	}
	err := decodeJSON(r, &body)
	if err == nil {
		err = required("username", body.Username, "password", body.Password)
	}
	if err != nil {
		fail(w, dialectECE, http.StatusBadRequest, "root.malformed_request", err.Error())
		return
	}
	u, err := e.authenticate(body.Username, body.Password)
	if err != nil {
		// Deactivated users are refused alike: ECE has no separate code for them.
		fail(w, dialectECE, http.StatusUnauthorized, "root.unauthenticated", "The supplied authentication is invalid.")
		return
	}
	res := e.eceIssue(u, randomString(12))
	if body.LoginState != nil && body.LoginState.Path != "" {
		// The bearer token travels in the fragment, which never reaches a server.
		w.Header().Set("Location", "/sso/token#"+res.Token+"?state="+url.QueryEscape(body.LoginState.Path))
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusFound)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// eceRefresh exchanges the current token for a new one of the same session. Under rotation each
// token refreshes once; it stays valid for other calls until it expires, as a JWT would.
func (e *Emulator) eceRefresh(w http.ResponseWriter, r *http.Request) {
	rec, err := e.redeem(bearer(r, false), kindECE)
	if err != nil {
		eceUnauthorized(w)
		return
	}
	// redeem has checked that the user exists and is active.
	writeJSON(w, http.StatusOK, e.eceIssue(e.userByID(rec.userID), rec.family))
}

// eceLogout destroys the session of the bearer token, or of the ec-sso-session-id cookie's token.
// Like ECE it answers 200 {} whatever it was given; an expired token still ends its session.
func (e *Emulator) eceLogout(w http.ResponseWriter, r *http.Request) {
	raw := bearer(r, false)
	if c, err := r.Cookie("ec-sso-session-id"); raw == "" && err == nil {
		raw = c.Value
	}
	if rec, ok := e.tokenRecord(raw); ok && rec.kind == kindECE {
		e.revokeFamily(rec.family)
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (e *Emulator) eceAuthInfo(w http.ResponseWriter, r *http.Request) {
	rec, err := e.check(bearer(r, false), kindECE)
	if err != nil {
		eceUnauthorized(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"has_elevated_permissions": false,
		"refresh_token_url":        eceRefreshURL,
		"expires_at":               eceTime(rec.exp),
	})
}

func (e *Emulator) eceMethods(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"password": true, "saml": false, "openid": false, "sso_methods": []any{}})
}
