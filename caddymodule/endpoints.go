package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/sitecontext"
	"github.com/sitegate/sitegate/upstream"
)

// maxLoginBody caps the login request's body.
const maxLoginBody = 16 << 10

// isEndpoint reports whether path is under the endpoint prefix.
func (g *sessionGate) isEndpoint(path string) bool {
	return strings.HasPrefix(path, g.prefix) && (len(path) == len(g.prefix) || path[len(g.prefix)] == '/')
}

// serveEndpoint answers sitegate's own endpoints: login, logout, session and healthz. Nothing
// under the prefix reaches the upstream.
func (h *Handler) serveEndpoint(w http.ResponseWriter, r *http.Request, c credential) error {
	w.Header().Set("Cache-Control", "no-store")
	if o := r.Header.Get("Origin"); o != "" && h.gate.origins[strings.ToLower(o)] {
		// CORS for allow-listed origins, credentials included; a preflight ends here.
		w.Header().Set("Access-Control-Allow-Origin", o)
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Add("Vary", "Origin")
		if r.Method == http.MethodOptions {
			w.Header().Set("Access-Control-Allow-Methods", "GET, POST")
			w.Header().Set("Access-Control-Allow-Headers", "Content-Type, Authorization")
			w.Header().Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	}
	var method string
	var serve func(http.ResponseWriter, *http.Request, credential) error
	oauth := h.gate.oauth != nil
	switch strings.TrimPrefix(r.URL.Path, h.gate.prefix) {
	case "/login":
		method, serve = http.MethodPost, h.login
		if oauth {
			method, serve = http.MethodGet, h.startLogin
		}
	case "/callback":
		if !oauth {
			return h.fail(w, r, errNoEndpoint)
		}
		method, serve = http.MethodGet, h.callback
	case "/logout":
		method, serve = http.MethodPost, h.logout
	case "/session":
		method, serve = http.MethodGet, h.describeSession
	case "/healthz":
		method, serve = http.MethodGet, h.healthz
	default:
		return h.fail(w, r, errNoEndpoint)
	}
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("Allow", method)
		return h.fail(w, r, errMethod)
	}
	return serve(w, r, c)
}

// sameSite refuses requests a browser made on behalf of another site: by Sec-Fetch-Site, by
// Origin (the request's own host or an allow-listed origin), and by content type (a cross-site
// form cannot send application/json without a CORS preflight).
func (g *sessionGate) sameSite(r *http.Request) *apiError {
	allowed := false
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		allowed = g.origins[strings.ToLower(o)]
		if !allowed && (err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host)) {
			return errCrossSite
		}
	}
	if site := r.Header.Get("Sec-Fetch-Site"); !allowed && site != "" && site != "same-origin" && site != "none" {
		return errCrossSite
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errContentType
	}
	return nil
}

// loginRequest is the body of POST login.
type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	// Handle asks for a session handle in the answer instead of a cookie.
	Handle bool `json:"handle,omitempty"`
}

// login signs a user in at Identity and starts a session.
func (h *Handler) login(w http.ResponseWriter, r *http.Request, c credential) error {
	g := h.gate
	if e := g.sameSite(r); e != nil {
		return h.fail(w, r, e)
	}
	var req loginRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxLoginBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() || req.Username == "" || req.Password == "" {
		return h.fail(w, r, errBadLogin)
	}

	s, err := h.signIn(w, r, c, errLoginFailed, func(ctx context.Context) (*upstream.Tokens, error) {
		return g.idp.(passwordClient).Login(ctx, req.Username, req.Password)
	})
	if s == nil {
		return err
	}
	view := g.view(s)
	if req.Handle {
		view.Handle = s.ID
	} else {
		g.setCookie(w, s)
	}
	requests.inc("endpoint")
	return writeJSON(w, http.StatusOK, view)
}

// signIn makes a sign-in's identity call, within the cap on concurrent calls, and creates the
// session of the tokens it yields, ending the session c it replaces (no session fixation). When
// it returns no session it has answered the request (refused when Identity refused the
// credentials) and returns what the handler returns.
func (h *Handler) signIn(w http.ResponseWriter, r *http.Request, c credential, refused *apiError,
	call func(context.Context) (*upstream.Tokens, error)) (*sessions.Session, error) {
	g := h.gate
	release, ok := g.tryCall()
	if !ok {
		h.logger.Warn("sign-in refused: too many concurrent identity calls")
		return nil, h.fail(w, r, errIdentityDown)
	}
	t, err := call(r.Context())
	release()
	switch {
	case errors.Is(err, upstream.ErrRejected):
		h.logger.Info("sign-in refused by identity", zap.Error(err)) // codes only, never credentials
		return nil, h.fail(w, r, refused)
	case r.Context().Err() != nil:
		return nil, r.Context().Err()
	case err != nil:
		h.logger.Warn("sign-in failed: identity unavailable", zap.Error(err))
		return nil, h.fail(w, r, errIdentityDown)
	}

	s := &sessions.Session{
		UserID: t.User.ID, Account: t.User.Account, Dialect: g.dialect, Name: t.User.Name, Roles: t.User.Roles,
		AccessToken: t.AccessToken, AccessExpiry: t.AccessExpiry,
		RefreshToken: t.RefreshToken, RefreshExpiry: t.RefreshExpiry,
		Deadline: t.RefreshExpiry, // a session cannot outlive its refresh token (zero: no limit)
	}
	if t.User.Type != "" {
		s.Claims = map[string]string{"type": t.User.Type}
	}
	if _, err := h.sites.Build(g.accountClaims(s), nil); errors.Is(err, sitecontext.ErrAccountMismatch) {
		return nil, h.fail(w, r, siteContextError(http.StatusForbidden, err))
	}
	if err := g.backend.store.Create(r.Context(), s); err != nil {
		h.logger.Warn("creating session", zap.Error(err))
		return nil, h.fail(w, r, errStoreDown)
	}
	metricSessionsCreated.WithLabelValues(g.dialect).Inc()
	if c.id != "" {
		h.deleteSession(r.Context(), c.id, "replaced")
	}
	return s, nil
}

// logout ends the session for every instance and clears the cookie.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request, c credential) error {
	g := h.gate
	if e := g.sameSite(r); e != nil {
		return h.fail(w, r, e)
	}
	if c.id != "" {
		if g.endSession != nil {
			h.identityLogout(r.Context(), c.id)
		}
		if err := g.backend.store.Delete(r.Context(), c.id); err != nil {
			h.logger.Warn("deleting session at logout", zap.Error(err))
			return h.fail(w, r, errStoreDown) // the cookie stays, so that the user can retry
		}
		metricSessionsDeleted.WithLabelValues("logout").Inc()
	}
	g.clearCookie(w)
	requests.inc("endpoint")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// identityLogout ends the session at Identity too (ECE's logout, OAuth2's revocation); a
// failure is logged and the local logout goes on.
func (h *Handler) identityLogout(ctx context.Context, id string) {
	s, err := h.gate.load(ctx, id)
	if err != nil {
		return
	}
	if err := h.gate.endSession(ctx, &upstream.Tokens{AccessToken: s.AccessToken, RefreshToken: s.RefreshToken}); err != nil {
		h.logger.Warn("identity logout failed; the local session ends anyway", zap.Error(err))
	}
}

// describeSession answers who is signed in: never a token.
func (h *Handler) describeSession(w http.ResponseWriter, r *http.Request, c credential) error {
	g := h.gate
	if c.id == "" {
		return h.fail(w, r, errSignIn)
	}
	s, err := g.load(r.Context(), c.id)
	if err != nil {
		return h.sessionFailed(w, r, c, err)
	}
	g.touch(s, time.Now())
	requests.inc("endpoint")
	return writeJSON(w, http.StatusOK, g.view(s))
}

// healthz is 200 when the token keys are loaded and the session store answers.
func (h *Handler) healthz(w http.ResponseWriter, r *http.Request, _ credential) error {
	if h.validator != nil && !h.validator.Ready() {
		return h.fail(w, r, errIdentityDown)
	}
	ctx, cancel := context.WithTimeout(r.Context(), touchTimeout)
	defer cancel()
	if err := h.gate.backend.store.Ping(ctx); err != nil {
		return h.fail(w, r, errStoreDown)
	}
	requests.inc("endpoint")
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// sessionView is what login and session answer.
type sessionView struct {
	User struct {
		ID      string   `json:"id"`
		Name    string   `json:"name,omitempty"`
		Account string   `json:"account,omitempty"`
		Roles   []string `json:"roles"`
	} `json:"user"`
	Dialect string `json:"dialect"`
	// ExpiresAt is the session's absolute end; IdleExpiresAt its end without activity.
	ExpiresAt     time.Time `json:"expires_at"`
	IdleExpiresAt time.Time `json:"idle_expires_at"`
	// Handle is the session handle, when the login asked for one.
	Handle string `json:"handle,omitempty"`
}

func (g *sessionGate) view(s *sessions.Session) sessionView {
	var v sessionView
	v.User.ID, v.User.Name, v.User.Account, v.User.Roles = s.UserID, s.Name, s.Account, s.Roles
	if v.User.Roles == nil {
		v.User.Roles = []string{}
	}
	v.Dialect = s.Dialect
	v.ExpiresAt = s.Deadline.UTC().Truncate(time.Second)
	v.IdleExpiresAt = s.LastSeen.Add(g.idleTimeout).UTC().Truncate(time.Second)
	if v.IdleExpiresAt.After(v.ExpiresAt) {
		v.IdleExpiresAt = v.ExpiresAt
	}
	return v
}

// setCookie sets the session cookie; it lasts until the session's deadline.
func (g *sessionGate) setCookie(w http.ResponseWriter, s *sessions.Session) {
	http.SetCookie(w, &http.Cookie{
		Name: g.cookie, Value: s.ID, Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode,
		MaxAge: max(int(time.Until(s.Deadline).Seconds()), 1),
	})
}

// clearCookie tells the browser to forget the session cookie.
func (g *sessionGate) clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{
		Name: g.cookie, Value: "", Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode, MaxAge: -1,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
	return nil
}
