package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/sitecontext"
	"github.com/sitegate/sitegate/tokens"
	"github.com/sitegate/sitegate/upstream"
)

const (
	// maxReplayBody is the largest request body buffered so that the request can be replayed
	// after an upstream 401.
	maxReplayBody = 64 << 10
	// touchTimeout bounds a background touch.
	touchTimeout = 2 * time.Second
)

// credential is a session credential: from the cookie or an "Authorization: Session" handle.
type credential struct {
	id     string
	cookie bool // the ID came from the cookie: clear it when the session is over
	// loginState is the OAuth2 sign-in's state cookie, read by the callback.
	loginState string
}

// sessionCredential finds the request's session credential. cookieID is the session cookie's
// value (already removed from the Cookie header). A handle and a cookie naming different
// sessions are two credentials.
func (g *sessionGate) sessionCredential(h http.Header, cookieID string) (credential, *apiError) {
	handle := ""
	if values := h.Values("Authorization"); len(values) == 1 {
		scheme, v, _ := strings.Cut(values[0], " ")
		if strings.EqualFold(scheme, "Session") {
			if !b64token(v) || len(v) > 256 {
				return credential{}, errInvalidRequest
			}
			handle = v
		}
	}
	switch {
	case handle != "" && cookieID != "" && handle != cookieID:
		return credential{}, errTwoCredentials
	case handle != "":
		h.Del("Authorization")
		return credential{id: handle}, nil
	}
	return credential{id: cookieID, cookie: cookieID != ""}, nil
}

// serveSession authenticates a request by its session, refreshing the tokens when they are
// about to expire, and forwards it with the session's access token.
func (h *Handler) serveSession(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, c credential, client []string) error {
	g := h.gate
	s, err := g.load(r.Context(), c.id)
	if err != nil {
		return h.sessionFailed(w, r, c, err)
	}
	if apiErr := h.sameIdentity(r, s); apiErr != nil {
		return h.fail(w, r, apiErr)
	}
	now := time.Now()
	if s.AccessExpiry.Sub(now) < g.refreshBefore {
		var apiErr *apiError
		if s, apiErr = h.refresh(r.Context(), s); apiErr != nil {
			return h.failSession(w, r, c, apiErr)
		}
	}
	id := sessionIdentity(s)
	site, err := h.sites.Build(g.accountClaims(s), client)
	switch {
	case errors.Is(err, sitecontext.ErrAccountMismatch):
		return h.fail(w, r, siteContextError(http.StatusForbidden, err))
	case err != nil:
		return h.fail(w, r, siteContextError(http.StatusBadRequest, err))
	}
	g.touch(s, now)
	h.inject(r, id, site)
	requests.inc("session")
	return h.forward(w, r, next, c, s)
}

// load returns the session with this ID; a session of another identity service is not found.
func (g *sessionGate) load(ctx context.Context, id string) (*sessions.Session, error) {
	s, err := g.backend.store.Load(ctx, id)
	if err == nil && s.Dialect != g.dialect {
		return nil, sessions.ErrNotFound
	}
	return s, err
}

// tryCall takes a slot under the cap on concurrent identity calls without waiting; ok is false
// when none is free. release gives the slot back.
func (g *sessionGate) tryCall() (release func(), ok bool) {
	select {
	case g.calls <- struct{}{}:
		return func() { <-g.calls }, true
	default:
		return nil, false
	}
}

// sameIdentity refuses a bearer token sent with a session credential when it names another
// user; a bearer token that cannot be checked is refused too. Other Authorization schemes are
// not credentials of sitegate's: the session's bearer replaces them.
func (h *Handler) sameIdentity(r *http.Request, s *sessions.Session) *apiError {
	raw, apiErr := bearerToken(r.Header)
	if apiErr == errMissingCredentials || apiErr == errUnsupportedScheme {
		return nil
	}
	if apiErr != nil || h.validator == nil {
		return errTwoCredentials
	}
	id, err := h.validator.Validate(r.Context(), raw)
	if err != nil || id.Subject != s.UserID {
		return errTwoCredentials
	}
	return nil
}

// accountClaims presents the session's account to the site context builder as the claim it
// reads.
func (g *sessionGate) accountClaims(s *sessions.Session) map[string]any {
	if s.Account == "" {
		return nil
	}
	return map[string]any{g.accountClaim: s.Account}
}

// sessionIdentity is the identity placeholders and headers see for a session: its claims, and
// id, name, account and roles.
func sessionIdentity(s *sessions.Session) *tokens.Identity {
	claims := make(map[string]any, len(s.Claims)+4)
	for k, v := range s.Claims {
		claims[k] = v
	}
	claims["id"], claims["name"], claims["account"] = s.UserID, s.Name, s.Account
	claims["roles"] = strings.Join(s.Roles, ",")
	return &tokens.Identity{Subject: s.UserID, Claims: claims, Expiry: s.AccessExpiry}
}

// sessionFailed answers a failed session load.
func (h *Handler) sessionFailed(w http.ResponseWriter, r *http.Request, c credential, err error) error {
	switch {
	case errors.Is(err, sessions.ErrNotFound), errors.Is(err, sessions.ErrUnreadable):
		return h.failSession(w, r, c, errSessionExpired)
	case r.Context().Err() != nil:
		return r.Context().Err() // the client is gone
	default:
		h.logger.Warn("session store unavailable", zap.Error(err))
		return h.fail(w, r, errStoreDown)
	}
}

// failSession answers e, clearing the cookie when the session is over.
func (h *Handler) failSession(w http.ResponseWriter, r *http.Request, c credential, e *apiError) error {
	if e == errSessionExpired && c.cookie {
		h.gate.clearCookie(w)
		if h.gate.signInRedirect(w, r) {
			requests.inc("sign_in_redirect")
			return nil
		}
	}
	return h.fail(w, r, e)
}

// refresh gets new tokens for s once across every caller and instance: unless another caller
// has refreshed s already, Identity is called whatever s's expiry (an upstream 401 forces a
// refresh). On failure it returns
// the session to forward with when there is one (Identity is down but the token is still
// valid), else an error: SESSION_EXPIRED (Identity refused; the session is deleted),
// IDENTITY_UNAVAILABLE or SESSION_STORE_UNAVAILABLE.
func (h *Handler) refresh(ctx context.Context, s *sessions.Session) (*sessions.Session, *apiError) {
	g, b := h.gate, h.gate.backend
	start := time.Now()
	valid := s.AccessExpiry.After(start)
	if b.coolingOff(s.ID, start) {
		return keepIfValid(s, valid, errIdentityDown)
	}
	var locked atomic.Int64 // when this caller's refresh function started, if it did
	ns, outcome, err := b.refresher.Refresh(ctx, s, func(ctx context.Context, cur *sessions.Session) (*sessions.Session, error) {
		locked.Store(int64(time.Since(start)))
		return g.callRefresh(ctx, cur)
	})
	lockWait := time.Duration(locked.Load())
	if outcome == sessions.Coalesced || lockWait == 0 {
		lockWait = time.Since(start)
	}
	metricLockWait.Observe(lockWait.Seconds())
	switch {
	case err == nil:
		result := "ok"
		if outcome == sessions.Coalesced {
			result = "coalesced"
		}
		metricRefreshes.WithLabelValues(g.dialect, result).Inc()
		return ns, nil
	case errors.Is(err, upstream.ErrRejected):
		metricRefreshes.WithLabelValues(g.dialect, "rejected").Inc()
		h.deleteSession(ctx, s.ID, "rejected")
		return nil, errSessionExpired
	case errors.Is(err, sessions.ErrNotFound):
		return nil, errSessionExpired
	case ctx.Err() != nil:
		return nil, errClientGone
	}
	metricRefreshes.WithLabelValues(g.dialect, "unavailable").Inc()
	h.logger.Warn("session refresh failed; keeping the session", zap.Error(err))
	if ns != nil {
		return ns, nil // Identity answered; the store did not take the new tokens
	}
	if errors.Is(err, sessions.ErrUnavailable) { // the store failed: Identity needs no cool-off
		return keepIfValid(s, valid, errStoreDown)
	}
	b.allow(b.cooling, s.ID, time.Now(), coolOff)
	return keepIfValid(s, valid, errIdentityDown)
}

// keepIfValid returns s when its access token is still valid, else e: an expired token is never
// forwarded.
func keepIfValid(s *sessions.Session, valid bool, e *apiError) (*sessions.Session, *apiError) {
	if valid {
		return s, nil
	}
	return nil, e
}

// errTooManyCalls: this instance's cap on concurrent identity calls is reached.
var errTooManyCalls = fmt.Errorf("%w: too many concurrent identity calls", upstream.ErrUnavailable)

// callRefresh exchanges cur's tokens at Identity, within the cap on concurrent calls.
func (g *sessionGate) callRefresh(ctx context.Context, cur *sessions.Session) (*sessions.Session, error) {
	release, ok := g.tryCall()
	if !ok {
		return nil, errTooManyCalls
	}
	defer release()
	start := time.Now()
	t, err := g.idp.Refresh(ctx, &upstream.Tokens{AccessToken: cur.AccessToken, RefreshToken: cur.RefreshToken})
	metricRefreshSeconds.WithLabelValues(g.dialect).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	next := *cur
	next.AccessToken, next.AccessExpiry = t.AccessToken, t.AccessExpiry
	if t.RefreshToken != "" {
		next.RefreshToken, next.RefreshExpiry = t.RefreshToken, t.RefreshExpiry
	}
	return &next, nil
}

// deleteSession deletes a session that is over; a store failure leaves it to expire.
func (h *Handler) deleteSession(ctx context.Context, id, reason string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), touchTimeout)
	defer cancel()
	if err := h.gate.backend.store.Delete(ctx, id); err != nil {
		h.logger.Warn("deleting an ended session", zap.String("reason", reason), zap.Error(err))
		return
	}
	metricSessionsDeleted.WithLabelValues(reason).Inc()
}

// touch records the session's activity in the background, at most once per touchEvery, so
// that a request costs one store round trip.
func (g *sessionGate) touch(s *sessions.Session, now time.Time) {
	if now.Sub(s.LastSeen) < g.touchEvery {
		return
	}
	if _, busy := g.backend.touching.LoadOrStore(s.ID, struct{}{}); busy {
		return
	}
	go func() {
		defer g.backend.touching.Delete(s.ID)
		ctx, cancel := context.WithTimeout(context.Background(), touchTimeout)
		defer cancel()
		if err := g.backend.store.Touch(ctx, s.ID, now); err != nil && !errors.Is(err, sessions.ErrNotFound) {
			if c := g.logger.Check(zapcore.DebugLevel, "touching session"); c != nil {
				c.Write(zap.Error(err))
			}
		}
	}()
}

// forward calls next with the session's access token. A small request body is buffered, so
// that an upstream 401 can be answered by one forced refresh and a replay. sitegate's cookie is
// dropped from the upstream's Set-Cookie headers.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, c credential, s *sessions.Session) error {
	g := h.gate
	r.Header.Set("Authorization", "Bearer "+s.AccessToken)
	body, replayable, err := bufferBody(r)
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	var saved http.Header
	if replayable {
		saved = w.Header().Clone()
	}
	var buf bytes.Buffer
	rec := caddyhttp.NewResponseRecorder(w, &buf, g.holdBack(replayable))
	err = next.ServeHTTP(rec, r)
	if !replayable || !rec.Buffered() || rec.Status() != http.StatusUnauthorized {
		return err
	}

	// The upstream refused the token: refresh once, then replay with the new one.
	var ns *sessions.Session
	var apiErr *apiError
	if g.backend.allow(g.backend.forced, s.ID, time.Now(), forcedEvery) {
		ns, apiErr = h.refresh(r.Context(), s)
	}
	if apiErr != errSessionExpired && (ns == nil || ns.AccessToken == s.AccessToken) {
		return rec.WriteResponse() // nothing new to try: the upstream's 401 stands
	}
	clear(w.Header()) // drop the held answer's headers
	for k, v := range saved {
		w.Header()[k] = v
	}
	if apiErr == errSessionExpired {
		return h.failSession(w, r, c, apiErr)
	}
	metricReplays.Inc()
	r.Header.Set("Authorization", "Bearer "+ns.AccessToken)
	r.Body = io.NopCloser(bytes.NewReader(body))
	return next.ServeHTTP(caddyhttp.NewResponseRecorder(w, nil, g.holdBack(false)), r)
}

// holdBack is the response recorder's decision: it drops the upstream's Set-Cookie for
// sitegate's cookie and, when the request can be replayed, holds back a 401.
func (g *sessionGate) holdBack(replayable bool) caddyhttp.ShouldBufferFunc {
	return func(status int, header http.Header) bool {
		dropSetCookie(header, g.cookie)
		return replayable && status == http.StatusUnauthorized
	}
}

// bufferBody reads a request body of at most maxReplayBody into memory and puts a reader of it
// back. A larger body is left streaming (what was read is put back in front) and the request is
// not replayable.
func bufferBody(r *http.Request) (body []byte, replayable bool, err error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 { // Caddy wraps even an empty body
		return nil, true, nil
	}
	if r.ContentLength > maxReplayBody {
		return nil, false, nil
	}
	body, err = io.ReadAll(io.LimitReader(r.Body, maxReplayBody+1))
	if err != nil {
		return nil, false, err
	}
	if len(body) > maxReplayBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		return nil, false, nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return body, true, nil
}

// dropSetCookie removes the Set-Cookie headers that set name: only sitegate sets its cookie.
func dropSetCookie(h http.Header, name string) {
	values, ok := h["Set-Cookie"]
	if !ok {
		return
	}
	kept := values[:0]
	for _, v := range values {
		n, _, _ := strings.Cut(v, "=")
		if strings.TrimSpace(n) != name {
			kept = append(kept, v)
		}
	}
	if len(kept) == 0 {
		delete(h, "Set-Cookie")
		return
	}
	h["Set-Cookie"] = kept
}

// takeCookie removes the cookie name from the request's Cookie headers and returns its value.
// Two different values are a conflict.
func takeCookie(h http.Header, name string) (value string, conflict bool) {
	values, ok := h["Cookie"]
	if !ok {
		return "", false
	}
	kept := values[:0]
	for _, line := range values {
		if !strings.Contains(line, name) {
			kept = append(kept, line)
			continue
		}
		var rest []string
		for part := range strings.SplitSeq(line, ";") {
			n, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			if n != name {
				if p := strings.TrimSpace(part); p != "" {
					rest = append(rest, p)
				}
				continue
			}
			v = strings.Trim(v, `"`)
			if value != "" && v != value {
				conflict = true
			}
			value = v
		}
		if len(rest) > 0 {
			kept = append(kept, strings.Join(rest, "; "))
		}
	}
	if len(kept) == 0 {
		delete(h, "Cookie")
	} else {
		h["Cookie"] = kept
	}
	return value, conflict
}

// inject sets x-site-context, the identity placeholders and the identity headers.
func (h *Handler) inject(r *http.Request, id *tokens.Identity, site sitecontext.Result) {
	setSite(r.Header, &site, h.v3Headers)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	setIdentity(repl, id, site.Account)
	for name, tmpl := range h.IdentityHeaders {
		if v := headerValue(repl.ReplaceKnown(tmpl, "")); v != "" {
			r.Header.Set(name, v)
		}
	}
}

// setSite sets x-site-context, and with v3 the x-fabric-tenant-id and x-fabric-channel-id pair.
func setSite(h http.Header, site *sitecontext.Result, v3 bool) {
	if site.Value == "" {
		return
	}
	h[sitecontext.Header] = []string{site.Value}
	if v3 {
		h[sitecontext.TenantHeader] = []string{site.Account}
		if site.Channel != 0 {
			h[sitecontext.ChannelHeader] = []string{strconv.Itoa(site.Channel)}
		}
	}
}
