package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/upstream"
)

const (
	// stateLifetime is how long a browser has from GET login to the callback.
	stateLifetime = 10 * time.Minute
	// loginCookieSuffix makes the state cookie's name from the session cookie's.
	loginCookieSuffix = "-login"
)

// Errors of the browser sign-in. Every failure of the callback is the same LOGIN_FAILED: the
// log says which check failed, the browser learns nothing it could probe with.
var (
	errLoginFlow   = &apiError{http.StatusUnauthorized, "LOGIN_FAILED", "The sign-in could not be completed; start it again.", "login_failed"}
	errBadRedirect = &apiError{http.StatusBadRequest, "INVALID_REQUEST", "The redirect target must be a path on this site or an allowed origin.", "invalid_request"}
)

// oauthLogin is the oauth2 dialect's browser sign-in: authorization code with PKCE (S256), and
// a state bound to the browser by a sealed, short-lived cookie and redeemed once across every
// instance.
type oauthLogin struct {
	client      *upstream.OAuth2
	scopes      []string
	redirectURI string // "" derives it from the request
	cookie      string // the state cookie's name
}

// defaultUserScopes are asked for when none are configured: offline_access is what gets a
// refresh token.
var defaultUserScopes = []string{"openid", "offline_access"}

func newOAuthLogin(id *Identity, client *upstream.OAuth2, cookie string) (*oauthLogin, error) {
	redirect, err := resolvePlaceholders("redirect_uri", id.RedirectURI)
	if err != nil {
		return nil, err
	}
	o := &oauthLogin{client: client, scopes: id.Scopes, redirectURI: redirect, cookie: cookie + loginCookieSuffix}
	if len(o.scopes) == 0 {
		o.scopes = defaultUserScopes
	}
	return o, nil
}

// loginState is what the state cookie holds, sealed: the state sent to Identity, the PKCE
// verifier, where to go afterwards and when it expires.
type loginState struct {
	State    string `json:"s"`
	Verifier string `json:"v"`
	Redirect string `json:"rd"`
	Expires  int64  `json:"exp"`
}

// stateAD binds the sealed cookie to its purpose: a session key ring seals other things too.
var stateAD = []byte("sitegate oauth2 login state")

// startLogin answers GET login: it sets the state cookie and sends the browser to the
// authorization endpoint.
func (h *Handler) startLogin(w http.ResponseWriter, r *http.Request, _ credential) error {
	g, o := h.gate, h.gate.oauth
	rd, err := safeRedirect(r.URL.Query().Get("rd"), g.origins)
	if u, perr := url.Parse(rd); err == nil && perr == nil && u.Host == "" && g.isEndpoint(u.Path) {
		err = errors.New("the target is a sitegate endpoint") // a sign-in loop, at best
	}
	if err != nil {
		h.logger.Debug("sign-in refused: redirect target", zap.Error(err))
		return h.fail(w, r, errBadRedirect)
	}
	verifier, challenge, err := upstream.NewPKCE()
	if err != nil {
		return err
	}
	st := loginState{State: randomToken(), Verifier: verifier, Redirect: rd, Expires: time.Now().Add(stateLifetime).Unix()}
	authURL, err := o.client.AuthCodeURL(r.Context(), st.State, challenge, o.redirectFor(r, g.prefix), o.scopes)
	if err != nil {
		h.logger.Warn("sign-in: identity unavailable", zap.Error(err))
		return h.fail(w, r, errIdentityDown)
	}
	plain, _ := json.Marshal(st)
	http.SetCookie(w, &http.Cookie{
		Name: o.cookie, Value: base64.RawURLEncoding.EncodeToString(g.backend.keys.Seal(plain, stateAD)),
		Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode, MaxAge: int(stateLifetime.Seconds()),
	})
	requests.inc("endpoint")
	http.Redirect(w, r, authURL, http.StatusFound)
	return nil
}

// callback answers GET callback: it checks the state against the browser's cookie, redeems it
// once, exchanges the code with the PKCE verifier, starts the session and sends the browser
// on to its target.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request, c credential) error {
	g, o := h.gate, h.gate.oauth
	// The state cookie is single-use whatever happens next.
	http.SetCookie(w, &http.Cookie{Name: o.cookie, Value: "", Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode, MaxAge: -1})
	st, why := o.checkState(r, c.loginState, g.backend.keys)
	if why != "" {
		h.logger.Info("sign-in callback refused", zap.String("reason", why))
		return h.fail(w, r, errLoginFlow)
	}
	// Redeem the state on every instance: a lease on it, never released, that outlives it.
	if _, err := g.backend.store.TryLock(r.Context(), "oauth2-state:"+st.State, stateLifetime); err != nil {
		if errors.Is(err, sessions.ErrLocked) {
			h.logger.Info("sign-in callback refused", zap.String("reason", "state already used"))
			return h.fail(w, r, errLoginFlow)
		}
		h.logger.Warn("sign-in callback: session store unavailable", zap.Error(err))
		return h.fail(w, r, errStoreDown)
	}
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		h.logger.Info("sign-in callback refused", zap.String("reason", "identity answered an error"), zap.String("error", oauthErrorCode(e)))
		return h.fail(w, r, errLoginFlow)
	}

	s, err := h.signIn(w, r, c, errLoginFlow, func(ctx context.Context) (*upstream.Tokens, error) {
		return o.client.Exchange(ctx, q.Get("code"), st.Verifier, o.redirectFor(r, g.prefix))
	})
	if s == nil {
		return err
	}
	g.setCookie(w, s)
	requests.inc("endpoint")
	// As given: http.Redirect would clean the path (/a//b becomes /a/b).
	w.Header().Set("Location", st.Redirect)
	w.WriteHeader(http.StatusSeeOther)
	return nil
}

// checkState opens the state cookie's value and matches it against the callback's state; why says
// which check failed ("" when none did).
func (o *oauthLogin) checkState(r *http.Request, cookie string, keys *sessions.KeyRing) (st loginState, why string) {
	if cookie == "" {
		return st, "no state cookie (another browser, or the cookie expired)"
	}
	sealed, err := base64.RawURLEncoding.DecodeString(cookie)
	if err != nil {
		return st, "state cookie malformed"
	}
	plain, err := keys.Open(sealed, stateAD)
	if err != nil || json.Unmarshal(plain, &st) != nil {
		return st, "state cookie does not open"
	}
	got := r.URL.Query().Get("state")
	switch {
	case time.Now().Unix() >= st.Expires:
		return st, "state expired"
	case got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(st.State)) != 1:
		return st, "state does not match the browser's"
	}
	return st, ""
}

// redirectFor is the callback URL Identity sends the browser back to.
func (o *oauthLogin) redirectFor(r *http.Request, prefix string) string {
	if o.redirectURI != "" {
		return o.redirectURI
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + prefix + "/callback"
}

// signInRedirect sends a browser navigation without a session to the sign-in, back to where it
// was going afterwards; it reports false for requests that are not navigations.
func (g *sessionGate) signInRedirect(w http.ResponseWriter, r *http.Request) bool {
	if g.oauth == nil || !g.loginRedirect || (r.Method != http.MethodGet && r.Method != http.MethodHead) ||
		!strings.Contains(r.Header.Get("Accept"), "text/html") || g.isEndpoint(r.URL.Path) {
		return false
	}
	if mode := r.Header.Get("Sec-Fetch-Mode"); mode != "" && mode != "navigate" {
		return false
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, g.prefix+"/login?rd="+url.QueryEscape(r.URL.RequestURI()), http.StatusFound)
	return true
}

// oauthErrorCode is Identity's error code made safe to log: RFC 6749 codes are short ASCII.
func oauthErrorCode(s string) string {
	if len(s) > 64 || strings.IndexFunc(s, func(c rune) bool { return !(c == '_' || 'a' <= c && c <= 'z') }) >= 0 {
		return "(unexpected)"
	}
	return s
}

// randomToken is 32 random bytes, base64url.
func randomToken() string { return base64.RawURLEncoding.EncodeToString(randomBytes(32)) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand's Read never fails
	return b
}
