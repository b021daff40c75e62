package e2e

// The oauth2 dialect's browser sign-in, end to end: one Caddy with sitegate (memory store) in
// front of a recording upstream, the fabric Identity emulator in this process behind a
// recording reverse proxy, and a "browser" that is a plain HTTP client with a cookie jar of its
// own and no redirect following, so that every hop of the authorization code flow is asserted.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/upstream/emulator"
)

const (
	// oaClient is the public user app (PKCE, no secret) registered at the emulator with the
	// gateway's callback as its one redirect URI.
	oaClient = "sitegate-user-app"
	oaUser   = "pat"
	// oaAccessLifetime is the emulator's access token lifetime and oaRefreshBefore the gateway's
	// refresh window: a session's token enters the window oaAccessLifetime-oaRefreshBefore after
	// it was issued, so that requests right after a sign-in never refresh and a test that wants a
	// refresh waits that long.
	oaAccessLifetime = 4 * time.Second
	oaRefreshBefore  = 2500 * time.Millisecond
	// oaLoginCookie is the state cookie of a sign-in in progress.
	oaLoginCookie = cookieName + "-login"
	// oaKeyEnv holds the session key: the test knows it, so that it can seal state cookies of its
	// own (sitegate's clock cannot be moved, so an expired state is one sealed with a past expiry).
	oaKeyEnv = "SITEGATE_E2E_OAUTH2_SESSION_KEY"
	// oaStateAD is the additional data sitegate seals the state cookie with
	// (caddymodule/oauth_login.go, stateAD).
	oaStateAD = "sitegate oauth2 login state"
)

var (
	formHeader = http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	// navigation is what a browser sends when the user follows a link or types a URL.
	navigation = http.Header{"Accept": {"text/html,application/xhtml+xml,*/*;q=0.8"}, "Sec-Fetch-Mode": {"navigate"}}

	oaFormAction = regexp.MustCompile(`<form method="post" action="([^"]*)">`)
	oaHidden     = regexp.MustCompile(`<input type="hidden" name="([^"]*)" value="([^"]*)">`)
)

// TestOAuth2Sessions runs the browser sign-in of the oauth2 dialect end to end: the flow with
// PKCE and a sealed state cookie, every way the callback must refuse, open redirects, navigations
// without a session, refresh with rotation, logout with revocation, Identity refusing or down,
// and no secret in the log or in any answer. Subtests run in order and share one Caddy.
func TestOAuth2Sessions(t *testing.T) {
	start := time.Now()
	e := startOAuth2(t)
	// First: it needs a gateway that has not fetched the discovery document yet.
	t.Run("identity down when the sign-in starts", e.testDiscoveryDown)
	t.Run("browser sign-in, session and refresh with rotation", e.testSignIn)
	t.Run("callback state failures", e.testStateFailures)
	t.Run("PKCE binds the code to its login", e.testPKCE)
	t.Run("open redirects", e.testOpenRedirects)
	t.Run("navigations without a session", e.testNavigation)
	t.Run("logout revokes at identity", e.testLogout)
	t.Run("identity refuses the refresh", e.testRefreshRejected)
	t.Run("identity down at the callback", e.testCallbackIdentityDown)
	t.Run("no secret in the log or in answers", e.testNoSecrets)
	t.Logf("TestOAuth2Sessions took %v", time.Since(start).Round(time.Millisecond))
}

// --- Harness -----------------------------------------------------------------------------------

// oaEnv is what the subtests share.
type oaEnv struct {
	gw, callbackURL string
	id              *identityServer // the emulator itself (control API)
	front           *oaFront        // the emulator as sitegate and the browser reach it
	up              *sessUpstream
	logFile         string
	password        string
	key             string
	keys            *sessions.KeyRing

	mu      sync.Mutex
	answers []resp            // every answer of the gateway
	secrets map[string]string // value → what it is: codes, state cookies, session IDs, verifiers…
}

func startOAuth2(t *testing.T) *oaEnv {
	t.Helper()
	port := freePort(t)
	e := &oaEnv{gw: fmt.Sprintf("http://127.0.0.1:%d", port), password: randomText("pw-"), secrets: map[string]string{}}
	e.callbackURL = e.gw + "/.sitegate/callback"
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	e.key = base64.StdEncoding.EncodeToString(raw)
	kr, err := sessions.NewKeyRing(raw)
	if err != nil {
		t.Fatal(err)
	}
	e.keys = kr
	t.Setenv(oaKeyEnv, e.key)
	e.remember("user password", e.password)
	e.remember("session key", e.key)

	e.id = startIdentity(t, emulator.Config{
		Users:          []emulator.User{{Username: oaUser, Password: e.password, Account: demoAccount, FirstName: "Pat", LastName: "Kake"}},
		Clients:        []emulator.Client{{ID: oaClient, RedirectURIs: []string{e.callbackURL}}},
		AccessLifetime: oaAccessLifetime,
	})
	e.front = startOAFront(t, e.id.url)
	e.up = newSessUpstream(t)
	e.logFile = startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%[1]d {
	bind 127.0.0.1
	sitegate {
		identity oauth2 %[2]s/oauth2/default {
			client_id %[3]s
			redirect_uri http://127.0.0.1:%[1]d/.sitegate/callback
			timeout 2s
		}
		site_context {
			channel 12
			stage production
		}
		identity_header X-User-Id {http.auth.user.id}
		session {
			key {env.%[5]s}
			refresh_before %[6]s
			login_redirect
		}
	}
	reverse_proxy %[4]s
}`, port, e.front.url, oaClient, e.up.url, oaKeyEnv, oaRefreshBefore))
	if r := do("GET", e.gw+"/.sitegate/healthz", nil, ""); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("the gateway is not ready: %v %d %s", r.err, r.status, r.body)
	}
	return e
}

// remember adds a value the log and the answers must never hold.
func (e *oaEnv) remember(what, value string) {
	if value == "" {
		return
	}
	e.mu.Lock()
	e.secrets[value] = what
	e.mu.Unlock()
}

func (e *oaEnv) record(r resp) {
	e.mu.Lock()
	e.answers = append(e.answers, r)
	e.mu.Unlock()
}

func (e *oaEnv) loginURL(rd string) string {
	return e.gw + "/.sitegate/login?rd=" + url.QueryEscape(rd)
}

// count is the emulator's call counter of an endpoint.
func (e *oaEnv) count(t *testing.T, endpoint string) int {
	t.Helper()
	return e.id.calls(t).Calls[endpoint]
}

// exchanges counts the authorization codes sitegate tried to exchange.
func (e *oaEnv) exchanges(t *testing.T) int {
	t.Helper()
	return e.count(t, "oauth2.token.authorization_code")
}

// logCount counts the lines of Caddy's log that hold every one of parts.
func (e *oaEnv) logCount(t *testing.T, parts ...string) int {
	t.Helper()
	raw, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(raw), "\n") {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			n++
		}
	}
	return n
}

// refusedFor returns a check that the callback was refused for reason (the start of the
// reason sitegate logs) exactly once since refusedFor was called.
func (e *oaEnv) refusedFor(t *testing.T, reason string) func() {
	t.Helper()
	parts := []string{`"msg":"sign-in callback refused"`, `"reason":"` + reason}
	before := e.logCount(t, parts...)
	return func() {
		t.Helper()
		if n := e.logCount(t, parts...) - before; n != 1 {
			t.Errorf("the log has %d new callback refusals for %q, want 1", n, reason)
		}
	}
}

// forwarded checks the upstream's 200 and returns the one request it received.
func (e *oaEnv) forwarded(t *testing.T, r resp) seen {
	t.Helper()
	return e.up.answered(t, r)
}

// refused checks an APIError of sitegate's that never reached the upstream.
func (e *oaEnv) refused(t *testing.T, r resp, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("got %d %.300s (Location %q), want %d %s", r.status, r.body, r.header.Get("Location"), status, code)
	}
	apiError(t, r.status, r.body, status, code)
	if status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="sitegate"`) {
		t.Errorf("401 without sitegate's challenge: %q", r.header.Get("WWW-Authenticate"))
	}
	if n := len(e.up.take()); n != 0 {
		t.Errorf("a refused request reached the upstream (%d)", n)
	}
}

// loginFailed checks a refused callback: 401 LOGIN_FAILED, no session cookie, the state cookie
// cleared, no redirect.
func (e *oaEnv) loginFailed(t *testing.T, r resp) {
	t.Helper()
	e.refused(t, r, http.StatusUnauthorized, "LOGIN_FAILED")
	noCookie(t, r)
	loginCookieCleared(t, r)
	if loc := r.header.Get("Location"); loc != "" {
		t.Errorf("a refused callback redirects to %q", loc)
	}
}

// loginCookieCleared checks that the answer tells the browser to forget the state cookie.
func loginCookieCleared(t *testing.T, r resp) {
	t.Helper()
	ck := setCookie(t, r.header, oaLoginCookie)
	if ck == nil || ck.Value != "" || ck.MaxAge >= 0 || ck.Path != "/" {
		t.Errorf("the state cookie is not cleared: Set-Cookie %q", r.header.Values("Set-Cookie"))
	}
}

// signedIn checks a successful callback: 303 to rd, the session cookie set, the state cookie
// cleared. It returns the session ID.
func (e *oaEnv) signedIn(t *testing.T, r resp, rd string) string {
	t.Helper()
	if r.status != http.StatusSeeOther || r.header.Get("Location") != rd {
		t.Fatalf("callback: %d to %q, want 303 to %q: %s", r.status, r.header.Get("Location"), rd, r.body)
	}
	ck := setCookie(t, r.header, cookieName)
	if ck == nil || len(ck.Value) < 43 || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteLaxMode ||
		ck.Path != "/" || ck.Domain != "" || ck.MaxAge < int((11*time.Hour).Seconds()) {
		t.Fatalf("session cookie: %+v (Set-Cookie %q)", ck, r.header.Values("Set-Cookie"))
	}
	loginCookieCleared(t, r)
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("callback answer with Cache-Control %q, want no-store", cc)
	}
	return ck.Value
}

// active asks the emulator whether it still takes a token (RFC 7662 introspection).
func (e *oaEnv) active(t *testing.T, token string) bool {
	t.Helper()
	r := do("POST", e.id.url+"/oauth2/default/v1/introspect", formHeader, url.Values{"token": {token}, "client_id": {oaClient}}.Encode())
	var v struct {
		Active *bool `json:"active"`
	}
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("introspection: %v %d %s", r.err, r.status, r.body)
	}
	decode(t, r.body, &v)
	if v.Active == nil {
		t.Fatalf("introspection without active: %s", r.body)
	}
	return *v.Active
}

// sealState seals a state cookie as sitegate does, with the test's copy of the session key.
func (e *oaEnv) sealState(state, verifier, rd string, expires time.Time) string {
	plain, _ := json.Marshal(map[string]any{"s": state, "v": verifier, "rd": rd, "exp": expires.Unix()})
	v := base64.RawURLEncoding.EncodeToString(e.keys.Seal(plain, []byte(oaStateAD)))
	e.remember("state cookie", v)
	e.remember("PKCE verifier", verifier)
	return v
}

// authorizeURL is an authorization request of the test's own, as sitegate would make it.
func (e *oaEnv) authorizeURL(state, challenge string) string {
	return e.front.url + "/oauth2/default/v1/authorize?" + url.Values{
		"response_type": {"code"}, "client_id": {oaClient}, "redirect_uri": {e.callbackURL},
		"scope": {"openid offline_access"}, "state": {state},
		"code_challenge_method": {"S256"}, "code_challenge": {challenge},
	}.Encode()
}

func oaS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func oaPKCE() (verifier, challenge string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	verifier = base64.RawURLEncoding.EncodeToString(b)
	return verifier, oaS256(verifier)
}

// --- The emulator behind a recording proxy ---------------------------------------------------------

// oaCall is a call to the emulator as the proxy saw it.
type oaCall struct {
	path   string
	form   url.Values
	status int // 0: the emulator dropped the connection
	body   string
}

type oaTokens struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	IDToken      string `json:"id_token"`
	Error        string `json:"error"`
}

func (c oaCall) tokens() oaTokens {
	var tok oaTokens
	_ = json.Unmarshal([]byte(c.body), &tok)
	return tok
}

// oaFront is a reverse proxy in front of the emulator that records every call: the forms
// sitegate posts (codes, verifiers, refresh tokens) and what the emulator answers (tokens). It
// passes the Host on, so the emulator names its issuer after the proxy, and it drops the
// caller's connection when the emulator drops its own.
type oaFront struct {
	url string

	mu    sync.Mutex
	calls []oaCall
}

func startOAFront(t *testing.T, emu string) *oaFront {
	t.Helper()
	target, err := url.Parse(emu)
	if err != nil {
		t.Fatal(err)
	}
	f := &oaFront{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		ErrorHandler: func(http.ResponseWriter, *http.Request, error) { panic(http.ErrAbortHandler) },
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var form url.Values
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(b))
			form, _ = url.ParseQuery(string(b))
		}
		tw := &tapWriter{ResponseWriter: w}
		defer func() { // also when the proxy aborts
			f.mu.Lock()
			f.calls = append(f.calls, oaCall{path: r.URL.Path, form: form, status: tw.status, body: tw.buf.String()})
			f.mu.Unlock()
		}()
		rp.ServeHTTP(tw, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// find returns the calls to the path ending in suffix (and for the token endpoint, of grant),
// oldest first.
func (f *oaFront) find(suffix, grant string) []oaCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []oaCall
	for _, c := range f.calls {
		if strings.HasSuffix(c.path, suffix) && (grant == "" || c.form.Get("grant_type") == grant) {
			out = append(out, c)
		}
	}
	return out
}

func (f *oaFront) all() []oaCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// --- The browser ---------------------------------------------------------------------------------

// oaBrowser keeps the gateway's cookies as a browser does, Secure ones included (Go's cookie
// jar does not send those over plain http), and follows no redirect by itself.
type oaBrowser struct {
	env *oaEnv
	jar map[string]string
}

// browser returns a new browser; it holds a cookie of the site's own, which must reach the
// upstream untouched.
func (e *oaEnv) browser() *oaBrowser {
	return &oaBrowser{env: e, jar: map[string]string{"theme": "dark"}}
}

// do makes a request. To the gateway it sends the jar's cookies unless h has a Cookie header
// of its own, records the answer and keeps the cookies it sets.
func (b *oaBrowser) do(t *testing.T, method, target string, h http.Header, body string) resp {
	t.Helper()
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	gateway := strings.HasPrefix(target, b.env.gw+"/")
	if gateway && h.Get("Cookie") == "" {
		names := make([]string, 0, len(b.jar))
		for n := range b.jar {
			names = append(names, n)
		}
		sort.Strings(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, n+"="+b.jar[n])
		}
		if len(parts) > 0 {
			h.Set("Cookie", strings.Join(parts, "; "))
		}
	}
	r := do(method, target, h, body)
	if r.err != nil {
		t.Fatalf("%s %s: %v", method, target, r.err)
	}
	if gateway {
		b.env.record(r)
		for _, line := range r.header.Values("Set-Cookie") {
			ck, err := http.ParseSetCookie(line)
			if err != nil {
				t.Fatalf("Set-Cookie %q: %v", line, err)
			}
			switch {
			case ck.MaxAge < 0 || ck.Value == "":
				delete(b.jar, ck.Name)
			default:
				b.jar[ck.Name] = ck.Value
				what := "cookie " + ck.Name
				switch ck.Name {
				case cookieName:
					what = "session ID"
				case oaLoginCookie:
					what = "state cookie"
				}
				b.env.remember(what, ck.Value)
			}
		}
	}
	return r
}

// oaSignIn is one sign-in as the browser goes through it.
type oaSignIn struct {
	authorize   string     // the authorization request sitegate sent the browser to
	query       url.Values // its parameters
	stateCookie string     // the state cookie GET login set
	code, state string     // what Identity sent the browser back with
	callback    string     // the URL Identity sent the browser back to
}

// start opens the login URL and checks the redirect to the authorization endpoint and the
// state cookie.
func (b *oaBrowser) start(t *testing.T, loginURL string) *oaSignIn {
	t.Helper()
	e := b.env
	r := b.do(t, "GET", loginURL, nil, "")
	loc := r.header.Get("Location")
	if r.status != http.StatusFound || !strings.HasPrefix(loc, e.front.url+"/oauth2/default/v1/authorize?") {
		t.Fatalf("GET %s: %d to %q, want 302 to the authorization endpoint: %s", loginURL, r.status, loc, r.body)
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for k, want := range map[string]string{"response_type": "code", "client_id": oaClient, "redirect_uri": e.callbackURL, "code_challenge_method": "S256"} {
		if got := q.Get(k); got != want {
			t.Errorf("authorization request: %s=%q, want %q", k, got, want)
		}
	}
	if scopes := strings.Fields(q.Get("scope")); !slices.Contains(scopes, "offline_access") || !slices.Contains(scopes, "openid") {
		t.Errorf("authorization request: scope %q, want openid and offline_access", q.Get("scope"))
	}
	if len(q.Get("code_challenge")) != 43 || len(q.Get("state")) < 43 {
		t.Errorf("authorization request: code_challenge %q and state %q, want 43 characters or more", q.Get("code_challenge"), q.Get("state"))
	}
	ck := setCookie(t, r.header, oaLoginCookie)
	if ck == nil || ck.Value == "" || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" ||
		ck.Domain != "" || ck.MaxAge < 590 || ck.MaxAge > 600 {
		t.Fatalf("state cookie: %+v (Set-Cookie %q)", ck, r.header.Values("Set-Cookie"))
	}
	// The cookie is sealed: it shows neither the state nor where the browser goes afterwards.
	if raw, err := base64.RawURLEncoding.DecodeString(ck.Value); err != nil || bytes.Contains(raw, []byte(q.Get("state"))) || bytes.Contains(raw, []byte(`"rd"`)) {
		t.Errorf("the state cookie is not sealed (%v)", err)
	}
	noCookie(t, r)
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("login answer with Cache-Control %q, want no-store", cc)
	}
	return &oaSignIn{authorize: loc, query: q, stateCookie: ck.Value}
}

// authorize signs the user in on the emulator's hosted page and reads the redirect back to the
// gateway's callback.
func (b *oaBrowser) authorize(t *testing.T, s *oaSignIn) {
	t.Helper()
	e := b.env
	if s.query == nil {
		u, err := url.Parse(s.authorize)
		if err != nil {
			t.Fatal(err)
		}
		s.query = u.Query()
	}
	r := b.do(t, "GET", s.authorize, nil, "")
	action := oaFormAction.FindStringSubmatch(r.body)
	if r.status != http.StatusOK || action == nil {
		t.Fatalf("the authorization endpoint shows no login form: %d %.500s", r.status, r.body)
	}
	form := url.Values{}
	for _, m := range oaHidden.FindAllStringSubmatch(r.body, -1) {
		form.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	for _, k := range []string{"client_id", "redirect_uri", "response_type", "scope", "state", "code_challenge", "code_challenge_method"} {
		if form.Get(k) != s.query.Get(k) {
			t.Fatalf("the login form carries %s=%q, want %q", k, form.Get(k), s.query.Get(k))
		}
	}
	form.Set("username", oaUser)
	form.Set("password", e.password)
	r = b.do(t, "POST", e.front.url+html.UnescapeString(action[1]), formHeader, form.Encode())
	loc := r.header.Get("Location")
	if r.status != http.StatusFound || !strings.HasPrefix(loc, e.callbackURL+"?") {
		t.Fatalf("signing in on the login form: %d to %q, want 302 to the callback: %.500s", r.status, loc, r.body)
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	s.code, s.state, s.callback = u.Query().Get("code"), u.Query().Get("state"), loc
	if s.code == "" || s.state != s.query.Get("state") {
		t.Fatalf("Identity sent the browser back with %q, want a code and the state sent", loc)
	}
	e.remember("authorization code", s.code)
}

// callbackWith is the callback URL with other parameters.
func (e *oaEnv) callbackWith(q url.Values) string { return e.callbackURL + "?" + q.Encode() }

// pending returns a new browser with a sign-in that Identity has sent back to the callback.
func (e *oaEnv) pending(t *testing.T, rd string) (*oaBrowser, *oaSignIn) {
	t.Helper()
	b := e.browser()
	s := b.start(t, e.loginURL(rd))
	b.authorize(t, s)
	return b, s
}

// signIn goes through a whole sign-in and returns the session ID.
func (b *oaBrowser) signIn(t *testing.T, rd string) string {
	t.Helper()
	s := b.start(t, b.env.loginURL(rd))
	b.authorize(t, s)
	return b.env.signedIn(t, b.do(t, "GET", s.callback, nil, ""), rd)
}

// --- Subtests ------------------------------------------------------------------------------------

func (e *oaEnv) testDiscoveryDown(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	e.id.fault(t, `{"endpoint":"oauth2.discovery","status":503,"times":1}`)
	b := e.browser()
	r := b.do(t, "GET", e.loginURL("/"), nil, "")
	e.refused(t, r, http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE")
	if r.header.Get("Retry-After") == "" || r.header.Get("Location") != "" {
		t.Errorf("503 with Retry-After %q and Location %q", r.header.Get("Retry-After"), r.header.Get("Location"))
	}
	if ck := setCookie(t, r.header, oaLoginCookie); ck != nil {
		t.Errorf("a sign-in that could not start set the state cookie: %q", r.header.Values("Set-Cookie"))
	}
	noCookie(t, r)
	// A failed discovery is not kept: the next sign-in fetches the document and starts.
	b.start(t, e.loginURL("/"))
	if n := e.count(t, "oauth2.discovery"); n != 2 {
		t.Errorf("discovery was fetched %d times, want 2 (the failed one, then one that is kept)", n)
	}
	b.start(t, e.loginURL("/"))
	if n := e.count(t, "oauth2.discovery"); n != 2 {
		t.Errorf("discovery was fetched %d times after a third sign-in, want it kept", n)
	}
}

func (e *oaEnv) testSignIn(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	b := e.browser()

	// A navigation without a session goes to the sign-in, which will send it back.
	const target = "/orders?x=1&y=%2F"
	r := b.do(t, "GET", e.gw+target, navigation, "")
	if want := "/.sitegate/login?rd=" + url.QueryEscape(target); r.status != http.StatusFound || r.header.Get("Location") != want {
		t.Fatalf("navigation without a session: %d to %q, want 302 to %q", r.status, r.header.Get("Location"), want)
	}
	s := b.start(t, e.gw+r.header.Get("Location"))
	b.authorize(t, s)
	r = b.do(t, "GET", s.callback, nil, "")
	signedAt := time.Now()
	sid := e.signedIn(t, r, target)
	if b.jar[cookieName] != sid || b.jar[oaLoginCookie] != "" {
		t.Fatalf("after the callback the browser holds %v", b.jar)
	}
	if n := e.exchanges(t); n != 1 {
		t.Errorf("%d code exchanges, want 1", n)
	}
	ex := e.front.find("/v1/token", "authorization_code")
	if len(ex) != 1 || ex[0].status != http.StatusOK {
		t.Fatalf("code exchanges at Identity: %+v", ex)
	}
	f := ex[0].form
	if f.Get("code") != s.code || f.Get("redirect_uri") != e.callbackURL || f.Get("client_id") != oaClient ||
		oaS256(f.Get("code_verifier")) != s.query.Get("code_challenge") || f.Has("client_secret") {
		t.Errorf("the exchange does not match the login: code %t, redirect_uri %q, client_id %q, verifier of the challenge %t",
			f.Get("code") == s.code, f.Get("redirect_uri"), f.Get("client_id"), oaS256(f.Get("code_verifier")) == s.query.Get("code_challenge"))
	}
	first := ex[0].tokens()
	if first.AccessToken == "" || first.RefreshToken == "" {
		t.Fatalf("the exchange gave no access or refresh token: %.300s", ex[0].body)
	}

	// The navigation now reaches the upstream as the user, with the access token Identity issued.
	got := e.forwarded(t, b.do(t, "GET", e.gw+target, navigation, ""))
	if got.bearer() != first.AccessToken {
		t.Errorf("the upstream got Authorization %.60q, want the access token of the exchange", got.header.Get("Authorization"))
	}
	var site struct {
		Account string `json:"account"`
		Channel int    `json:"channel"`
		Stage   string `json:"stage"`
	}
	decode(t, got.header.Get("X-Site-Context"), &site)
	if site.Account != demoAccount || site.Channel != 12 || site.Stage != "production" {
		t.Errorf("the upstream got x-site-context %q", got.header.Get("X-Site-Context"))
	}
	userID := got.header.Get("X-User-Id")
	if userID == "" || got.path != "/orders" {
		t.Errorf("the upstream got %s with X-User-Id %q", got.path, userID)
	}
	if c := got.header.Values("Cookie"); len(c) != 1 || c[0] != "theme=dark" {
		t.Errorf("the upstream got Cookie %q, want the site's own cookie only", c)
	}
	// A stale state cookie sent along is kept from the upstream too.
	stale := http.Header{"Cookie": {cookieName + "=" + sid + "; " + oaLoginCookie + "=" + s.stateCookie + "; theme=dark"}}
	got = e.forwarded(t, b.do(t, "GET", e.gw+"/orders", stale, ""))
	if c := got.header.Values("Cookie"); len(c) != 1 || c[0] != "theme=dark" {
		t.Errorf("with a stale state cookie the upstream got Cookie %q", c)
	}

	// Who is signed in: never a token.
	r = b.do(t, "GET", e.gw+"/.sitegate/session", nil, "")
	var view struct {
		User struct {
			ID, Name, Account string
			Roles             []string
		}
		Dialect   string
		ExpiresAt time.Time `json:"expires_at"`
	}
	if r.status != http.StatusOK {
		t.Fatalf("session: %d %s", r.status, r.body)
	}
	decode(t, r.body, &view)
	if view.Dialect != "oauth2" || view.User.ID != userID || view.User.Name != oaUser || view.User.Account != demoAccount ||
		!slices.Contains(view.User.Roles, "customer") || time.Until(view.ExpiresAt) < 11*time.Hour {
		t.Errorf("session: %s", r.body)
	}
	if strings.Contains(r.body, "eyJ") || strings.Contains(r.body, first.RefreshToken) || strings.Contains(r.body, sid) {
		t.Errorf("the session answer holds a token or the session ID: %s", r.body)
	}
	if n := e.count(t, "oauth2.token.refresh_token"); n != 0 {
		t.Fatalf("%d refreshes before the token entered the refresh window", n)
	}

	// Refresh: once the token is within refresh_before of its expiry, a request refreshes it,
	// once, and the upstream gets the new token.
	sleepUntil(signedAt.Add(oaAccessLifetime - oaRefreshBefore + 100*time.Millisecond))
	got = e.forwarded(t, b.do(t, "GET", e.gw+"/orders", nil, ""))
	refreshedAt := time.Now()
	calls := e.id.calls(t)
	if calls.Calls["oauth2.token.refresh_token"] != 1 || calls.RefreshTokenReuse != 0 {
		t.Fatalf("refresh calls %d, refresh token reuse %d; want 1 and 0", calls.Calls["oauth2.token.refresh_token"], calls.RefreshTokenReuse)
	}
	rf := e.front.find("/v1/token", "refresh_token")
	if len(rf) != 1 || rf[0].status != http.StatusOK || rf[0].form.Get("refresh_token") != first.RefreshToken {
		t.Fatalf("the refresh at Identity: %d calls, or not with the session's refresh token", len(rf))
	}
	second := rf[0].tokens()
	if got.bearer() != second.AccessToken || second.AccessToken == first.AccessToken {
		t.Errorf("after the refresh the upstream got %.60q, want the new access token", got.header.Get("Authorization"))
	}
	if second.RefreshToken == "" || second.RefreshToken == first.RefreshToken {
		t.Fatalf("the emulator did not rotate the refresh token")
	}
	got = e.forwarded(t, b.do(t, "GET", e.gw+"/orders", nil, ""))
	if got.bearer() != second.AccessToken || e.count(t, "oauth2.token.refresh_token") != 1 {
		t.Errorf("right after the refresh: bearer is the new token %t, refreshes %d (want 1)", got.bearer() == second.AccessToken, e.count(t, "oauth2.token.refresh_token"))
	}

	// In the window again, concurrent requests refresh once between them.
	sleepUntil(refreshedAt.Add(oaAccessLifetime - oaRefreshBefore + 100*time.Millisecond))
	const n = 5
	answers := make([]resp, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { answers[i] = do("GET", e.gw+"/orders", http.Header{"Cookie": {cookieName + "=" + sid}}, "") })
	}
	wg.Wait()
	for i, a := range answers {
		e.record(a)
		if a.err != nil || a.status != http.StatusOK {
			t.Fatalf("concurrent request %d: %v %d %s", i, a.err, a.status, a.body)
		}
	}
	calls = e.id.calls(t)
	if calls.Calls["oauth2.token.refresh_token"] != 2 || calls.RefreshTokenReuse != 0 {
		t.Fatalf("after %d concurrent requests: refresh calls %d (want 2 in all), refresh token reuse %d (want 0)",
			n, calls.Calls["oauth2.token.refresh_token"], calls.RefreshTokenReuse)
	}
	rf = e.front.find("/v1/token", "refresh_token")
	third := rf[len(rf)-1].tokens()
	if rf[len(rf)-1].form.Get("refresh_token") != second.RefreshToken {
		t.Errorf("the second refresh did not use the rotated refresh token")
	}
	for _, u := range e.up.take() {
		if u.bearer() != third.AccessToken {
			t.Errorf("a concurrent request reached the upstream with %.60q, want the newest access token", u.header.Get("Authorization"))
		}
	}
	// Rotation: the refresh tokens exchanged are spent; the newest one is good.
	if e.active(t, first.RefreshToken) || e.active(t, second.RefreshToken) || !e.active(t, third.RefreshToken) {
		t.Errorf("rotation: first refresh token active %t, second %t, newest %t; want false, false, true",
			e.active(t, first.RefreshToken), e.active(t, second.RefreshToken), e.active(t, third.RefreshToken))
	}

	// Signing in again in the same browser replaces the session (no fixation).
	next := b.signIn(t, "/again")
	if next == sid {
		t.Fatal("a new sign-in kept the session ID")
	}
	// (Another browser sends the old cookie: the answer clears the cookie, which would clear the
	// new one in this browser's jar.)
	r = e.browser().do(t, "GET", e.gw+"/orders", http.Header{"Cookie": {cookieName + "=" + sid}}, "")
	e.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
	e.forwarded(t, b.do(t, "GET", e.gw+"/orders", nil, ""))
}

func (e *oaEnv) testStateFailures(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	for _, tc := range []struct {
		name, reason string
		callback     func(t *testing.T, b *oaBrowser, s *oaSignIn) resp
	}{
		{"another browser: no state cookie", "no state cookie", func(t *testing.T, _ *oaBrowser, s *oaSignIn) resp {
			return e.browser().do(t, "GET", s.callback, nil, "")
		}},
		{"state other than the cookie's", "state does not match", func(t *testing.T, b *oaBrowser, s *oaSignIn) resp {
			return b.do(t, "GET", e.callbackWith(url.Values{"code": {s.code}, "state": {s.state + "x"}}), nil, "")
		}},
		{"no state parameter", "state does not match", func(t *testing.T, b *oaBrowser, s *oaSignIn) resp {
			return b.do(t, "GET", e.callbackWith(url.Values{"code": {s.code}}), nil, "")
		}},
		{"tampered state cookie", "state cookie does not open", func(t *testing.T, b *oaBrowser, s *oaSignIn) resp {
			return b.do(t, "GET", s.callback, http.Header{"Cookie": {oaLoginCookie + "=" + flip(s.stateCookie)}}, "")
		}},
		{"malformed state cookie", "state cookie malformed", func(t *testing.T, b *oaBrowser, s *oaSignIn) resp {
			return b.do(t, "GET", s.callback, http.Header{"Cookie": {oaLoginCookie + "=not*base64"}}, "")
		}},
		{"state cookie of another purpose", "state cookie does not open", func(t *testing.T, b *oaBrowser, s *oaSignIn) resp {
			// Sealed with the right key but other additional data.
			v := base64.RawURLEncoding.EncodeToString(e.keys.Seal([]byte(`{"s":"`+s.state+`"}`), []byte("another purpose")))
			return b.do(t, "GET", s.callback, http.Header{"Cookie": {oaLoginCookie + "=" + v}}, "")
		}},
		{"error=access_denied from Identity", "identity answered an error", func(t *testing.T, b *oaBrowser, s *oaSignIn) resp {
			return b.do(t, "GET", e.callbackWith(url.Values{"error": {"access_denied"}, "error_description": {"The user denied access."}, "state": {s.state}}), nil, "")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, s := e.pending(t, "/")
			before := e.exchanges(t)
			check := e.refusedFor(t, tc.reason)
			e.loginFailed(t, tc.callback(t, b, s))
			check()
			if n := e.exchanges(t) - before; n != 0 {
				t.Errorf("a refused callback exchanged the code (%d calls)", n)
			}
			if tc.name == "another browser: no state cookie" {
				// The state is not spent: the browser that started the sign-in still finishes it.
				e.signedIn(t, b.do(t, "GET", s.callback, nil, ""), "/")
			}
		})
	}

	t.Run("error redirect of Identity's own", func(t *testing.T) {
		b := e.browser()
		s := b.start(t, e.loginURL("/"))
		// An authorization request Identity refuses (response_type token): it sends the browser
		// back with error and the state.
		u, _ := url.Parse(s.authorize)
		q := u.Query()
		q.Set("response_type", "token")
		u.RawQuery = q.Encode()
		r := b.do(t, "GET", u.String(), nil, "")
		loc := r.header.Get("Location")
		if r.status != http.StatusFound || !strings.HasPrefix(loc, e.callbackURL+"?") || !strings.Contains(loc, "error=unsupported_response_type") {
			t.Fatalf("Identity answered %d to %q, want an error redirect to the callback", r.status, loc)
		}
		before := e.exchanges(t)
		check := e.refusedFor(t, "identity answered an error")
		e.loginFailed(t, b.do(t, "GET", loc, nil, ""))
		check()
		if n := e.exchanges(t) - before; n != 0 {
			t.Errorf("an error callback exchanged a code (%d calls)", n)
		}
	})

	t.Run("replayed callback", func(t *testing.T) {
		b, s := e.pending(t, "/")
		before := e.exchanges(t)
		sid := e.signedIn(t, b.do(t, "GET", s.callback, nil, ""), "/")
		// The browser forgot the state cookie; an attacker who saved the whole request replays it.
		check := e.refusedFor(t, "state already used")
		e.loginFailed(t, b.do(t, "GET", s.callback, http.Header{"Cookie": {oaLoginCookie + "=" + s.stateCookie}}, ""))
		check()
		if n := e.exchanges(t) - before; n != 1 {
			t.Errorf("%d code exchanges for a callback and its replay, want 1", n)
		}
		// The session of the first callback is unharmed.
		e.forwarded(t, b.do(t, "GET", e.gw+"/orders", http.Header{"Cookie": {cookieName + "=" + sid}}, ""))
	})

	// sitegate's clock cannot be moved, and the state lives 10 minutes: an expired state is a
	// state cookie sealed by the test with sitegate's key and a past expiry. A cookie sealed the
	// same way with a future expiry signs in, so the refusal is the expiry's.
	t.Run("expired state", func(t *testing.T) {
		for _, expired := range []bool{false, true} {
			state := randomText("state-") + randomText("")
			verifier, challenge := oaPKCE()
			b := e.browser()
			s := &oaSignIn{authorize: e.authorizeURL(state, challenge)}
			b.authorize(t, s)
			exp := time.Now().Add(time.Minute)
			if expired {
				exp = time.Now().Add(-time.Second)
			}
			cookie := e.sealState(state, verifier, "/sealed-by-the-test", exp)
			before := e.exchanges(t)
			check := e.refusedFor(t, "state expired")
			r := b.do(t, "GET", s.callback, http.Header{"Cookie": {oaLoginCookie + "=" + cookie}}, "")
			if !expired {
				e.signedIn(t, r, "/sealed-by-the-test")
				if n := e.exchanges(t) - before; n != 1 {
					t.Fatalf("%d code exchanges for the test's own state cookie, want 1", n)
				}
				continue
			}
			e.loginFailed(t, r)
			check()
			if n := e.exchanges(t) - before; n != 0 {
				t.Errorf("an expired state exchanged the code (%d calls)", n)
			}
		}
	})
}

func (e *oaEnv) testPKCE(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	b := e.browser()
	a := b.start(t, e.loginURL("/a"))
	bs := b.start(t, e.loginURL("/b")) // a second sign-in in the same browser: its state cookie replaces A's
	if b.jar[oaLoginCookie] != bs.stateCookie || a.stateCookie == bs.stateCookie || a.query.Get("code_challenge") == bs.query.Get("code_challenge") {
		t.Fatal("the second sign-in did not replace the state cookie with one of its own")
	}
	b.authorize(t, a)
	b.authorize(t, bs)

	// A's code and state, in the browser that now holds B's state cookie: the state does not
	// match, nothing is exchanged.
	check := e.refusedFor(t, "state does not match")
	e.loginFailed(t, b.do(t, "GET", a.callback, nil, ""))
	check()
	if n := e.exchanges(t); n != 0 {
		t.Errorf("%d code exchanges for a state that does not match, want 0", n)
	}

	// A's code with B's state and B's cookie: the state checks out, so sitegate exchanges A's
	// code with B's verifier, and Identity refuses it (PKCE).
	refusedByIdentity := []string{`"msg":"sign-in refused by identity"`}
	before := e.logCount(t, refusedByIdentity...)
	cross := e.callbackWith(url.Values{"code": {a.code}, "state": {bs.state}})
	e.loginFailed(t, b.do(t, "GET", cross, http.Header{"Cookie": {oaLoginCookie + "=" + bs.stateCookie}}, ""))
	if n := e.logCount(t, refusedByIdentity...) - before; n != 1 {
		t.Errorf("the log has %d new refusals by identity, want 1", n)
	}
	if n := e.exchanges(t); n != 1 {
		t.Fatalf("%d code exchanges, want 1 (A's code with B's verifier)", n)
	}
	ex := e.front.find("/v1/token", "authorization_code")
	last := ex[len(ex)-1]
	v := last.form.Get("code_verifier")
	if last.form.Get("code") != a.code || oaS256(v) != bs.query.Get("code_challenge") || oaS256(v) == a.query.Get("code_challenge") {
		t.Errorf("the exchange was not A's code with B's verifier")
	}
	if last.status != http.StatusBadRequest || last.tokens().Error != "invalid_grant" || !strings.Contains(last.body, "PKCE") {
		t.Errorf("Identity answered the exchange %d %s, want 400 invalid_grant (PKCE)", last.status, last.body)
	}

	// B's state was redeemed by that attempt: B's own code cannot use it any more.
	check = e.refusedFor(t, "state already used")
	e.loginFailed(t, b.do(t, "GET", bs.callback, http.Header{"Cookie": {oaLoginCookie + "=" + bs.stateCookie}}, ""))
	check()
	if n := e.exchanges(t); n != 1 {
		t.Errorf("%d code exchanges, want still 1", n)
	}
}

func (e *oaEnv) testOpenRedirects(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	port := strings.TrimPrefix(e.gw, "http://127.0.0.1:")
	b := e.browser()
	for _, rd := range []string{
		"//evil.example",
		`/\evil.example`,
		"/%09/evil.example",
		"https:evil.example",
		"https://evil.example",
		"https://127.0.0.1:" + port + "@evil.example",
		"http://127.0.0.1:" + port + "@evil.example",
		"javascript:alert(1)",
		"/%2F/evil.example",
		"/a/..//evil.example",
		"/\t/evil.example",
		" //evil.example",
		"http://evil.example/.sitegate/callback",
		"/.sitegate/login?rd=/", // a sign-in loop
		"/.sitegate/callback#x",
	} {
		r := b.do(t, "GET", e.loginURL(rd), nil, "")
		if r.status != http.StatusBadRequest || r.header.Get("Location") != "" || r.header.Get("WWW-Authenticate") != "" {
			t.Errorf("rd %q: %d to %q (challenge %q), want 400, no redirect and no bearer challenge", rd, r.status, r.header.Get("Location"), r.header.Get("WWW-Authenticate"))
			continue
		}
		apiError(t, r.status, r.body, http.StatusBadRequest, "INVALID_REQUEST")
		if ck := setCookie(t, r.header, oaLoginCookie); ck != nil {
			t.Errorf("rd %q: a refused sign-in set the state cookie", rd)
		}
		noCookie(t, r)
		if strings.Contains(r.body, "evil") {
			t.Errorf("rd %q: the answer echoes the target: %s", rd, r.body)
		}
	}

	// Local paths are accepted, and the callback sends the browser back to exactly the rd given.
	for _, rd := range []string{"/ok?a=1", "/", "/search?q=a%2Fb&c=%E2%82%AC", "/a//b?c=1"} {
		t.Run("back to "+rd, func(t *testing.T) {
			e.browser().signIn(t, rd)
		})
	}
	t.Run("no rd: back to /", func(t *testing.T) {
		b := e.browser()
		s := b.start(t, e.gw+"/.sitegate/login")
		b.authorize(t, s)
		e.signedIn(t, b.do(t, "GET", s.callback, nil, ""), "/")
	})
}

func (e *oaEnv) testNavigation(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	b := e.browser()
	r := b.do(t, "GET", e.gw+"/", navigation, "")
	if r.status != http.StatusFound || r.header.Get("Location") != "/.sitegate/login?rd=%2F" || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("navigation without a session: %d to %q (Cache-Control %q), want 302 to /.sitegate/login?rd=%%2F",
			r.status, r.header.Get("Location"), r.header.Get("Cache-Control"))
	}
	if len(r.header.Values("Set-Cookie")) != 0 || len(e.up.take()) != 0 {
		t.Errorf("the redirect set cookies %q or reached the upstream", r.header.Values("Set-Cookie"))
	}
	r = b.do(t, "HEAD", e.gw+"/orders", navigation, "")
	if r.status != http.StatusFound || r.header.Get("Location") != "/.sitegate/login?rd=%2Forders" {
		t.Errorf("HEAD navigation: %d to %q", r.status, r.header.Get("Location"))
	}

	// What is not a navigation gets the 401 an API client expects.
	for _, tc := range []struct {
		name, method string
		header       http.Header
	}{
		{"Accept: application/json", "GET", http.Header{"Accept": {"application/json"}}},
		{"no Accept", "GET", nil},
		{"POST accepting text/html", "POST", navigation},
		{"fetch() accepting text/html", "GET", http.Header{"Accept": {"text/html"}, "Sec-Fetch-Mode": {"cors"}}},
		{"an endpoint", "GET", navigation},
	} {
		target := e.gw + "/"
		if tc.name == "an endpoint" {
			target = e.gw + "/.sitegate/session"
		}
		r := b.do(t, tc.method, target, tc.header, "")
		if r.status != http.StatusUnauthorized {
			t.Errorf("%s: %d to %q, want 401", tc.name, r.status, r.header.Get("Location"))
			continue
		}
		e.refused(t, r, http.StatusUnauthorized, "MISSING_CREDENTIALS")
	}

	// An unknown (or expired) session cookie: a navigation goes to the sign-in and the cookie
	// is cleared; an API request gets SESSION_EXPIRED, the cookie cleared too.
	unknown := make([]byte, 32)
	_, _ = rand.Read(unknown)
	gone := http.Header{"Cookie": {cookieName + "=" + base64.RawURLEncoding.EncodeToString(unknown)}}
	nav := navigation.Clone()
	nav.Set("Cookie", gone.Get("Cookie"))
	r = b.do(t, "GET", e.gw+"/account?tab=1", nav, "")
	if r.status != http.StatusFound || r.header.Get("Location") != "/.sitegate/login?rd=%2Faccount%3Ftab%3D1" {
		t.Errorf("navigation with an unknown session: %d to %q, want 302 to the sign-in", r.status, r.header.Get("Location"))
	}
	cookieCleared(t, r)
	r = b.do(t, "GET", e.gw+"/account", gone, "")
	e.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
}

func (e *oaEnv) testLogout(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	b := e.browser()
	sid := b.signIn(t, "/")
	ex := e.front.find("/v1/token", "authorization_code")
	tok := ex[len(ex)-1].tokens()
	e.forwarded(t, b.do(t, "GET", e.gw+"/orders", nil, ""))
	revokes := len(e.front.find("/v1/revoke", ""))

	h := http.Header{"Content-Type": {"application/json"}, "Origin": {e.gw}}
	r := b.do(t, "POST", e.gw+"/.sitegate/logout", h, "")
	if r.status != http.StatusNoContent {
		t.Fatalf("logout: %d %s", r.status, r.body)
	}
	cookieCleared(t, r)
	if n := e.count(t, "oauth2.revoke"); n != 2 {
		t.Errorf("%d revocations at Identity, want 2 (refresh token, then access token)", n)
	}
	rv := e.front.find("/v1/revoke", "")[revokes:]
	if len(rv) != 2 || rv[0].form.Get("token") != tok.RefreshToken || rv[0].form.Get("token_type_hint") != "refresh_token" ||
		rv[1].form.Get("token") != tok.AccessToken || rv[1].form.Get("token_type_hint") != "access_token" ||
		rv[0].form.Get("client_id") != oaClient || rv[0].status != http.StatusOK || rv[1].status != http.StatusOK {
		t.Errorf("the revocations were not the refresh token then the access token of the session (%d calls)", len(rv))
	}

	// Identity no longer takes the session's tokens.
	rr := do("POST", e.id.url+"/oauth2/default/v1/token", formHeader,
		url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}, "client_id": {oaClient}}.Encode())
	if rr.err != nil || rr.status != http.StatusBadRequest || !strings.Contains(rr.body, "invalid_grant") {
		t.Errorf("the revoked refresh token at Identity: %v %d %.100s, want 400 invalid_grant", rr.err, rr.status, rr.body)
	}
	if e.active(t, tok.AccessToken) {
		t.Error("the access token is still active at Identity after logout")
	}

	// The gateway no longer takes the cookie.
	old := http.Header{"Cookie": {cookieName + "=" + sid}}
	r = b.do(t, "GET", e.gw+"/orders", old, "")
	e.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
	e.refused(t, b.do(t, "GET", e.gw+"/.sitegate/session", old, ""), http.StatusUnauthorized, "SESSION_EXPIRED")
	nav := navigation.Clone()
	nav.Set("Cookie", old.Get("Cookie"))
	r = b.do(t, "GET", e.gw+"/", nav, "")
	if r.status != http.StatusFound || r.header.Get("Location") != "/.sitegate/login?rd=%2F" {
		t.Errorf("navigation with the logged-out cookie: %d to %q, want 302 to the sign-in", r.status, r.header.Get("Location"))
	}
	cookieCleared(t, r)
}

func (e *oaEnv) testRefreshRejected(t *testing.T) {
	e.id.reset(t)
	e.up.take()
	b := e.browser()
	sid := b.signIn(t, "/")
	signedAt := time.Now()
	e.forwarded(t, b.do(t, "GET", e.gw+"/orders", nil, ""))
	e.id.setActive(t, oaUser, false)
	defer e.id.setActive(t, oaUser, true)

	sleepUntil(signedAt.Add(oaAccessLifetime - oaRefreshBefore + 100*time.Millisecond))
	r := b.do(t, "GET", e.gw+"/orders", nil, "")
	e.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
	if n := e.count(t, "oauth2.token.refresh_token"); n != 1 {
		t.Errorf("%d refresh calls, want 1", n)
	}
	rf := e.front.find("/v1/token", "refresh_token")
	if last := rf[len(rf)-1]; last.status != http.StatusBadRequest || last.tokens().Error != "invalid_grant" {
		t.Errorf("Identity answered the refresh %d %s, want invalid_grant", last.status, last.body)
	}
	// The session is gone, for API calls and navigations alike.
	old := http.Header{"Cookie": {cookieName + "=" + sid}}
	e.refused(t, b.do(t, "GET", e.gw+"/.sitegate/session", old, ""), http.StatusUnauthorized, "SESSION_EXPIRED")
	r = b.do(t, "GET", e.gw+"/orders", old, "")
	e.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	if n := e.count(t, "oauth2.token.refresh_token"); n != 1 {
		t.Errorf("the deleted session was refreshed again (%d refresh calls)", n)
	}
}

func (e *oaEnv) testCallbackIdentityDown(t *testing.T) {
	for _, tc := range []struct{ name, fault string }{
		{"503", `{"endpoint":"oauth2.token.authorization_code","status":503,"times":1}`},
		{"connection dropped", `{"endpoint":"oauth2.token.authorization_code","drop":true,"times":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.id.reset(t)
			e.up.take()
			b, s := e.pending(t, "/")
			e.id.fault(t, tc.fault)
			r := b.do(t, "GET", s.callback, nil, "")
			e.refused(t, r, http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE")
			if r.header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			noCookie(t, r)
			loginCookieCleared(t, r)
			if n := e.exchanges(t); n != 1 {
				t.Errorf("%d code exchanges, want 1", n)
			}
			e.refused(t, b.do(t, "GET", e.gw+"/.sitegate/session", nil, ""), http.StatusUnauthorized, "MISSING_CREDENTIALS")
			// Identity is back: a new sign-in works.
			b.signIn(t, "/")
		})
	}
}

func (e *oaEnv) testNoSecrets(t *testing.T) {
	e.mu.Lock()
	secrets := make(map[string]string, len(e.secrets))
	for v, what := range e.secrets {
		secrets[v] = what
	}
	answers := slices.Clone(e.answers)
	e.mu.Unlock()
	for _, c := range e.front.all() {
		for _, k := range []string{"code", "code_verifier", "refresh_token", "token", "password"} {
			if v := c.form.Get(k); v != "" {
				secrets[v] = "form " + k
			}
		}
		tok := c.tokens()
		for what, v := range map[string]string{"access token": tok.AccessToken, "refresh token": tok.RefreshToken, "ID token": tok.IDToken} {
			if v != "" {
				secrets[v] = what
			}
		}
	}
	for _, tok := range e.id.tokens() {
		if secrets[tok] == "" {
			secrets[tok] = "token"
		}
	}
	kinds := map[string]bool{}
	for v, what := range secrets {
		if len(v) < 16 {
			t.Fatalf("a %s of %d characters is too short to scan for", what, len(v))
		}
		kinds[what] = true
	}
	for _, want := range []string{"session ID", "state cookie", "authorization code", "form code_verifier", "access token", "refresh token"} {
		if !kinds[want] {
			t.Fatalf("no %s was collected: the scan would prove nothing", want)
		}
	}

	logs := readLogs(t, e.logFile)
	for v, what := range secrets {
		if strings.Contains(logs, v) {
			i := strings.Index(logs, v)
			t.Errorf("Caddy's log holds a %s: …%s…", what, logs[max(0, i-200):i])
		}
	}
	if len(answers) < 50 {
		t.Fatalf("only %d answers were recorded", len(answers))
	}
	t.Logf("scanning Caddy's log (%d bytes) and %d answers of the gateway for %d secrets", len(logs), len(answers), len(secrets))
	for _, a := range answers {
		for v, what := range secrets {
			if strings.Contains(a.body, v) {
				t.Errorf("an answer (%d) holds a %s in its body", a.status, what)
			}
			for name, values := range a.header {
				if name == "Set-Cookie" && (what == "session ID" || what == "state cookie") {
					continue // where they belong
				}
				if strings.Contains(strings.Join(values, "\n"), v) {
					t.Errorf("an answer (%d) holds a %s in its %s header", a.status, what, name)
				}
			}
		}
	}
}
