package e2e

// The harness of the session tests: two sitegate instances (separate processes, one Caddy each)
// sharing one real Redis, in front of a fabric Identity emulator and a recording upstream that
// both run in this test process, so that the tests can drive faults and read what was sent.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/redis/go-redis/v9"

	"github.com/sitegate/sitegate/internal/redistest"
	"github.com/sitegate/sitegate/upstream/emulator"
)

const (
	// instanceEnv names the Caddyfile of a sitegate instance process (see TestSitegateInstance).
	instanceEnv = "SITEGATE_E2E_INSTANCE"
	// accessLifetime is the emulator's access token lifetime; refreshBefore the instances'
	// refresh window. Tests put a token into the window by signing in with the emulator's clock
	// turned back (loginNear), so they wait seconds, not minutes.
	accessLifetime = 30 * time.Second
	refreshBefore  = 5 * time.Second
	cookieName     = "__Host-sitegate"
)

// TestSitegateInstance is not a test: it is the body of a sitegate instance process that
// startInstance runs from this test binary, exactly as cmd/sitegate does (caddycmd.Main with
// sitegate's modules linked in) with `run --config <Caddyfile>`. Building cmd/sitegate instead
// would cost a ten-second link on every run; the test binary already holds the same modules, and
// is race-instrumented whenever the tests are. The process ends when its stdin closes, so it
// never outlives the test process.
func TestSitegateInstance(t *testing.T) {
	config := os.Getenv(instanceEnv)
	if config == "" {
		t.Skip("the body of a sitegate instance process started by TestSessions")
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	os.Args = []string{"sitegate", "run", "--config", config, "--adapter", "caddyfile"}
	caddycmd.Main()
}

// process is a running sitegate process: the test binary re-run as TestSitegateInstance.
type process struct {
	name       string
	log        string // its stdout and stderr
	cmd        *exec.Cmd
	stdin      io.Closer
	configFile string
}

// instance is one running sitegate process of the session tests.
type instance struct {
	*process
	main, short, ece          string // base URLs of its three sites
	mainPort, shPort, ecePort int
}

// cluster is what the session tests share.
type cluster struct {
	a, b       *instance
	redis      *redistest.Server
	rdb        *redis.Client
	id         *identityServer
	up         *sessUpstream
	apiKey     string
	sessionKey string
	passwords  map[string]string

	mu  sync.Mutex
	ids []string // every session ID and handle handed out
}

func randomText(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{
		redis:     redistest.Start(t),
		apiKey:    randomText("api-key-"),
		passwords: map[string]string{},
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	c.sessionKey = base64.StdEncoding.EncodeToString(key)
	var users []emulator.User
	for _, u := range []string{"demo", "carol", "dave"} {
		c.passwords[u] = randomText("pw-" + u + "-")
		users = append(users, emulator.User{Username: u, Password: c.passwords[u], Account: demoAccount, FirstName: u, LastName: "Tester"})
	}
	c.id = startIdentity(t, emulator.Config{APIKey: c.apiKey, Users: users, AccessLifetime: accessLifetime})
	c.up = newSessUpstream(t)
	c.rdb = redis.NewClient(&redis.Options{Addr: c.redis.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = c.rdb.Close() })

	dir := t.TempDir()
	c.a = c.startInstance(t, dir, "a")
	c.b = c.startInstance(t, dir, "b")
	for _, in := range []*instance{c.a, c.b} {
		in.waitReady(t)
	}
	return c
}

// config is an instance's Caddyfile: the main site (fabric v1, Redis with short timeouts, a
// 1s identity timeout), a site with short idle and absolute timeouts, and an ECE site.
func (c *cluster) config(in *instance) string {
	return fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	log {
		output stderr
		format json
		level DEBUG
	}
}

http://:%[1]d {
	bind 127.0.0.1
	route /metrics {
		metrics
	}
	route {
		sitegate {
			identity fabric_v1 %[4]s {
				api_key {env.SITEGATE_E2E_API_KEY}
				timeout 1s
			}
			site_context {
				account %[7]s
			}
			identity_header X-User-Id {http.auth.user.id}
			session {
				store redis {
					url redis://%[6]s/0
					timeout 500ms
				}
				key {env.SITEGATE_E2E_SESSION_KEY}
				refresh_before %[8]s
				allow_origin https://app.example
			}
		}
		reverse_proxy %[5]s
	}
}

http://:%[2]d {
	bind 127.0.0.1
	route {
		sitegate {
			identity fabric_v1 %[4]s {
				api_key {env.SITEGATE_E2E_API_KEY}
			}
			site_context {
				account %[7]s
			}
			session {
				store redis {
					url redis://%[6]s/0
					key_prefix sgshort:
					timeout 500ms
				}
				key {env.SITEGATE_E2E_SESSION_KEY}
				idle_timeout 2s
				lifetime 4s
				refresh_before %[8]s
			}
		}
		reverse_proxy %[5]s
	}
}

http://:%[3]d {
	bind 127.0.0.1
	route {
		sitegate {
			identity ece %[4]s {
				timeout 1s
			}
			session {
				store redis redis://%[6]s/0
				key {env.SITEGATE_E2E_SESSION_KEY}
				refresh_before %[8]s
			}
		}
		reverse_proxy %[5]s
	}
}
`, in.mainPort, in.shPort, in.ecePort, c.id.url, c.up.url, c.redis.Addr, demoAccount, refreshBefore)
}

// startInstance runs a sitegate process; it is killed when the test ends.
func (c *cluster) startInstance(t *testing.T, dir, name string) *instance {
	t.Helper()
	in := &instance{mainPort: freePort(t), shPort: freePort(t), ecePort: freePort(t)}
	in.main = fmt.Sprintf("http://127.0.0.1:%d", in.mainPort)
	in.short = fmt.Sprintf("http://127.0.0.1:%d", in.shPort)
	in.ece = fmt.Sprintf("http://127.0.0.1:%d", in.ecePort)
	in.process = startProcess(t, dir, name, c.config(in),
		"SITEGATE_E2E_API_KEY="+c.apiKey,
		"SITEGATE_E2E_SESSION_KEY="+c.sessionKey,
	)
	return in
}

// startProcess writes caddyfile to <dir>/<name>.Caddyfile and runs it in a sitegate process
// (TestSitegateInstance) with env added to this process's environment and a home directory of
// its own; its output goes to <dir>/<name>.log. It is killed when the test ends, and the test
// fails if it reported a data race.
func startProcess(t *testing.T, dir, name, caddyfile string, env ...string) *process {
	t.Helper()
	p := &process{
		name:       name,
		configFile: filepath.Join(dir, name+".Caddyfile"),
		log:        filepath.Join(dir, name+".log"),
	}
	home := filepath.Join(dir, name+"-home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.configFile, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(os.Args[0], "-test.run=^TestSitegateInstance$")
	p.cmd.Env = append(os.Environ(), instanceEnv+"="+p.configFile,
		"HOME="+home, "XDG_CONFIG_HOME="+home, "XDG_DATA_HOME="+home)
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting instance %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = p.stdin.Close()
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		_ = logFile.Close()
		// A race-instrumented instance reports data races on its stderr.
		if b, err := os.ReadFile(p.log); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			i := bytes.Index(b, []byte("WARNING: DATA RACE"))
			t.Errorf("instance %s reported a data race:\n%s", name, b[i:min(len(b), i+6000)])
		}
	})
	return p
}

// waitReady polls the healthz endpoint of every site of the instance.
func (in *instance) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, base := range []string{in.main, in.short, in.ece} {
		for {
			r := do("GET", base+"/.sitegate/healthz", nil, "")
			if r.err == nil && r.status == http.StatusOK {
				break
			}
			if in.cmd.ProcessState != nil || time.Now().After(deadline) {
				b, _ := os.ReadFile(in.log)
				t.Fatalf("instance %s never became ready (%v %d):\n%s", in.name, r.err, r.status, tail(b, 4000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }

// --- HTTP ------------------------------------------------------------------------------------

// resp is an answer, or the transport error that stood in for one.
type resp struct {
	status int
	header http.Header
	body   string
	err    error
}

// do makes a request; it is safe to call from any goroutine.
func do(method, url string, header http.Header, body string) resp {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return resp{err: err}
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	res, err := client.Do(req)
	if err != nil {
		return resp{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: string(b), err: err}
}

// checkAnswer fails the test on a transport error or a 5xx other than sitegate's documented 503s.
func checkAnswer(t *testing.T, what string, r resp) {
	t.Helper()
	switch {
	case r.err != nil:
		t.Fatalf("%s: %v", what, r.err)
	case r.status == http.StatusServiceUnavailable:
		var e struct{ Error string }
		_ = json.Unmarshal([]byte(r.body), &e)
		if (e.Error != "SESSION_STORE_UNAVAILABLE" && e.Error != "IDENTITY_UNAVAILABLE") || r.header.Get("Retry-After") == "" {
			t.Errorf("%s: an undocumented 503: %v %s", what, r.header, r.body)
		}
	case r.status >= 500:
		t.Errorf("%s: %d %s", what, r.status, r.body)
	}
}

// send is do for the test goroutine: it fails on transport errors and on 5xx answers other
// than sitegate's 503s.
func (c *cluster) send(t *testing.T, method, url string, header http.Header, body string) resp {
	t.Helper()
	r := do(method, url, header, body)
	checkAnswer(t, method+" "+url, r)
	return r
}

// session is a signed-in session as a client holds it.
type session struct {
	id     string // cookie value or handle
	handle bool
	access string // the access token Identity issued at sign-in
	view   struct {
		User struct {
			ID, Name, Account string
			Roles             []string
		}
		Dialect       string
		ExpiresAt     time.Time `json:"expires_at"`
		IdleExpiresAt time.Time `json:"idle_expires_at"`
		Handle        string
	}
}

// cred returns the request header that presents the session.
func (s *session) cred() http.Header {
	if s.handle {
		return http.Header{"Authorization": {"Session " + s.id}}
	}
	return http.Header{"Cookie": {cookieName + "=" + s.id}}
}

func loginBody(user, password string, handle bool) string {
	b, _ := json.Marshal(map[string]any{"username": user, "password": password, "handle": handle})
	return string(b)
}

var jsonHeader = http.Header{"Content-Type": {"application/json"}}

// login signs user in at base (an instance's site) and checks the answer.
func (c *cluster) login(t *testing.T, base, user string, handle bool) *session {
	t.Helper()
	r := c.send(t, "POST", base+"/.sitegate/login", jsonHeader, loginBody(user, c.passwords[user], handle))
	if r.status != http.StatusOK {
		t.Fatalf("login %s at %s: %d %s", user, base, r.status, r.body)
	}
	s := &session{handle: handle, access: c.id.lastAccess()}
	decode(t, r.body, &s.view)
	if strings.Contains(r.body, "eyJ") || strings.Contains(r.body, s.access) {
		t.Errorf("the login answer holds a token: %s", r.body)
	}
	if handle {
		s.id = s.view.Handle
		if sc := r.header.Values("Set-Cookie"); len(sc) != 0 {
			t.Errorf("a login for a handle set a cookie: %q", sc)
		}
	} else {
		ck := setCookie(t, r.header, cookieName)
		if ck == nil || ck.MaxAge <= 0 || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" {
			t.Fatalf("login cookie: %+v (Set-Cookie %q)", ck, r.header.Values("Set-Cookie"))
		}
		s.id = ck.Value
		if s.view.Handle != "" {
			t.Errorf("a cookie login answered a handle too")
		}
	}
	if len(s.id) < 43 {
		t.Fatalf("session ID %q is not 32 random bytes", s.id)
	}
	c.remember(s.id)
	return s
}

// remember adds a session ID to the secrets the scans look for.
func (c *cluster) remember(id string) {
	c.mu.Lock()
	c.ids = append(c.ids, id)
	c.mu.Unlock()
}

// loginNear signs in with the emulator's clock turned back, so that the session's access token
// has about `remaining` left to live (between remaining-1s and remaining: exp is in seconds).
func (c *cluster) loginNear(t *testing.T, base, user string, remaining time.Duration) *session {
	t.Helper()
	c.id.skew(t, remaining-accessLifetime)
	defer c.id.skew(t, 0)
	return c.login(t, base, user, false)
}

// setCookie returns the Set-Cookie of name, or nil.
func setCookie(t *testing.T, h http.Header, name string) *http.Cookie {
	t.Helper()
	var found *http.Cookie
	for _, line := range h.Values("Set-Cookie") {
		ck, err := http.ParseSetCookie(line)
		if err != nil {
			t.Fatalf("Set-Cookie %q: %v", line, err)
		}
		if ck.Name == name {
			if found != nil {
				t.Errorf("two Set-Cookie for %s: %q", name, h.Values("Set-Cookie"))
			}
			found = ck
		}
	}
	return found
}

// cookieCleared checks that the answer tells the browser to forget the session cookie.
func cookieCleared(t *testing.T, r resp) {
	t.Helper()
	ck := setCookie(t, r.header, cookieName)
	if ck == nil || ck.Value != "" || ck.MaxAge >= 0 || ck.Path != "/" {
		t.Errorf("the session cookie is not cleared: Set-Cookie %q", r.header.Values("Set-Cookie"))
	}
}

// noCookie checks that the answer sets no session cookie.
func noCookie(t *testing.T, r resp) {
	t.Helper()
	if ck := setCookie(t, r.header, cookieName); ck != nil {
		t.Errorf("unexpected Set-Cookie %q", r.header.Values("Set-Cookie"))
	}
}

// redisKey is where a session lives: <prefix>{<hex sha256 of the ID>}:s.
func redisKey(prefix, id string) string {
	sum := sha256.Sum256([]byte(id))
	return prefix + "{" + hex.EncodeToString(sum[:]) + "}:s"
}

// exists reports whether the main sites' Redis holds the session.
func (c *cluster) exists(t *testing.T, prefix, id string) bool {
	t.Helper()
	n, err := c.rdb.Exists(context.Background(), redisKey(prefix, id)).Result()
	if err != nil {
		t.Fatalf("redis EXISTS: %v", err)
	}
	return n == 1
}

// metric returns the value of one series of the /metrics of the site at base (0 when absent).
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	r := do("GET", base+"/metrics", nil, "")
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("metrics of %s: %v %d", base, r.err, r.status)
	}
	for _, line := range strings.Split(r.body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// sumMetric is a series summed over both instances.
func (c *cluster) sumMetric(t *testing.T, series string) float64 {
	t.Helper()
	return metric(t, c.a.main, series) + metric(t, c.b.main, series)
}

// jwtExp reads a JWT's exp, unverified.
func jwtExp(t *testing.T, token string) time.Time {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %.20s…", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct{ Exp int64 }
	if err != nil || json.Unmarshal(b, &claims) != nil || claims.Exp == 0 {
		t.Fatalf("JWT payload without exp")
	}
	return time.Unix(claims.Exp, 0)
}

// sleepUntil sleeps until at.
func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }

// --- Identity ----------------------------------------------------------------------------------

// identityServer serves the emulator and keeps every token it hands out, for the secret scans.
type identityServer struct {
	url string
	emu *emulator.Emulator

	mu     sync.Mutex
	issued map[string]bool
	access []string // access tokens of logins and refreshes, in order
}

var jwtPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)

// tapWriter copies what the emulator writes, and its status.
type tapWriter struct {
	http.ResponseWriter
	status int
	buf    bytes.Buffer
}

func (w *tapWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *tapWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.buf.Write(b)
	return w.ResponseWriter.Write(b)
}

func (w *tapWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter } // Hijack, for drop faults

// tokenAnswer is an identity answer's tokens, in the field names of every dialect.
type tokenAnswer struct {
	OAuthAccess  string `json:"access_token"`
	OAuthRefresh string `json:"refresh_token"`
	V1Access     string `json:"accessToken"`
	V1Refresh    string `json:"refreshToken"`
	ECE          string `json:"token"`
}

// identityCall is an identity call the emulator answered: when it started, its status and the
// tokens it answered.
type identityCall struct {
	r      *http.Request
	start  time.Time
	status int
	tokens tokenAnswer
}

// startIdentity serves the emulator and keeps every token it hands out; observe, when given,
// sees every call but the control API's.
func startIdentity(t *testing.T, cfg emulator.Config, observe ...func(identityCall)) *identityServer {
	t.Helper()
	emu, err := emulator.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &identityServer{emu: emu, issued: map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		tw := &tapWriter{ResponseWriter: w}
		emu.ServeHTTP(tw, r)
		if strings.HasPrefix(r.URL.Path, emulator.ControlPrefix) {
			return
		}
		var a tokenAnswer
		_ = json.Unmarshal(tw.buf.Bytes(), &a)
		s.mu.Lock()
		for _, tok := range jwtPattern.FindAllString(tw.buf.String(), -1) {
			s.issued[tok] = true
		}
		for _, tok := range []string{a.OAuthAccess, a.OAuthRefresh, a.V1Access, a.V1Refresh, a.ECE} {
			if tok != "" {
				s.issued[tok] = true // opaque ones too
			}
		}
		if access := a.OAuthAccess + a.V1Access + a.ECE; access != "" {
			s.access = append(s.access, access)
		}
		s.mu.Unlock()
		for _, f := range observe {
			f(identityCall{r: r, start: start, status: tw.status, tokens: a})
		}
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// wasIssued reports whether the emulator issued tok.
func (s *identityServer) wasIssued(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued[tok]
}

// lastAccess is the access token of the last login or refresh.
func (s *identityServer) lastAccess() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.access) == 0 {
		return ""
	}
	return s.access[len(s.access)-1]
}

// tokens returns every token the emulator issued.
func (s *identityServer) tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.issued))
	for tok := range s.issued {
		out = append(out, tok)
	}
	return out
}

func (s *identityServer) control(t *testing.T, method, path, body string, want int) string {
	t.Helper()
	r := do(method, s.url+emulator.ControlPrefix+path, jsonHeader, body)
	if r.err != nil || r.status != want {
		t.Fatalf("emulator %s %s: %v %d %s", method, path, r.err, r.status, r.body)
	}
	return r.body
}

// reset clears the emulator's counters, faults and clock skew.
func (s *identityServer) reset(t *testing.T) {
	t.Helper()
	s.control(t, "POST", "reset", "", http.StatusNoContent)
}

// fault switches a fault on (emulator.Fault as JSON).
func (s *identityServer) fault(t *testing.T, f string) {
	t.Helper()
	s.control(t, "POST", "faults", f, http.StatusCreated)
}

func (s *identityServer) clearFaults(t *testing.T) {
	t.Helper()
	s.control(t, "DELETE", "faults", "", http.StatusNoContent)
}

func (s *identityServer) skew(t *testing.T, d time.Duration) {
	t.Helper()
	s.control(t, "PUT", "clock", fmt.Sprintf(`{"skew":%q}`, d.String()), http.StatusOK)
}

func (s *identityServer) setActive(t *testing.T, user string, active bool) {
	t.Helper()
	s.control(t, "PATCH", "users/"+user, fmt.Sprintf(`{"active":%t}`, active), http.StatusOK)
}

// calls returns the emulator's call counters.
func (s *identityServer) calls(t *testing.T) emulator.Calls {
	t.Helper()
	var c emulator.Calls
	decode(t, s.control(t, "GET", "calls", "", http.StatusOK), &c)
	return c
}

// --- Upstream ----------------------------------------------------------------------------------

// seen is a request the upstream received.
type seen struct {
	method, path string
	header       http.Header
	body         string
}

func (s seen) bearer() string {
	if v := s.header.Values("Authorization"); len(v) == 1 {
		if tok, ok := strings.CutPrefix(v[0], "Bearer "); ok {
			return tok
		}
	}
	return "(" + strings.Join(s.header.Values("Authorization"), "|") + ")"
}

// sessUpstream records what it receives. /once401/<x> answers 401 the first time each path is
// asked; /set-cookie sets cookies, sitegate's among them; everything else answers 200 "upstream".
type sessUpstream struct {
	url string

	mu   sync.Mutex
	reqs []seen
	once map[string]bool
}

func newSessUpstream(t *testing.T) *sessUpstream {
	u := &sessUpstream{once: map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, seen{r.Method, r.URL.Path, r.Header.Clone(), string(b)})
		first := !u.once[r.URL.Path]
		u.once[r.URL.Path] = true
		u.mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/once401/") && first:
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, "upstream refused")
			return
		case r.URL.Path == "/set-cookie":
			w.Header().Add("Set-Cookie", cookieName+"=forged-by-upstream; Path=/; Secure; HttpOnly")
			w.Header().Add("Set-Cookie", "other=1; Path=/")
			w.Header().Add("Set-Cookie", cookieName+"-pref=2; Path=/")
		}
		_, _ = io.WriteString(w, "upstream")
	}))
	t.Cleanup(srv.Close)
	u.url = srv.URL
	return u
}

// answered checks that r is the upstream's 200 and returns the one request it received for it.
func (u *sessUpstream) answered(t *testing.T, r resp) seen {
	t.Helper()
	if r.status != http.StatusOK || r.body != "upstream" {
		t.Fatalf("want the upstream's 200, got %d %s", r.status, r.body)
	}
	reqs := u.take()
	if len(reqs) != 1 {
		t.Fatalf("the upstream got %d requests, want 1", len(reqs))
	}
	return reqs[0]
}

// take returns the requests received since the last call.
func (u *sessUpstream) take() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.reqs
	u.reqs = nil
	return out
}
