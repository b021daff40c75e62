package e2e

// The sidecar (sitegate_service) end to end: three sitegate processes sharing one real Redis, in
// front of Identity emulators and the recording upstream that run in this test process.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sitegate/sitegate/internal/redistest"
	"github.com/sitegate/sitegate/upstream/emulator"
)

const (
	// sidecarLifetime is the lifetime of the emulator's client_credentials and service user
	// tokens; sidecarRefreshBefore the sidecars' refresh_before. The refresh window is
	// min(max(2s, 4s/10), 4s/2) = 2s, so a token is replaced every sidecarRefreshEvery, and a
	// refresh has time for a slow Identity (700ms) or a Redis that is down (its 500ms timeout).
	sidecarLifetime      = 4 * time.Second
	sidecarRefreshBefore = 2 * time.Second
	sidecarRefreshEvery  = sidecarLifetime - sidecarRefreshBefore
	// forceEvery is service.ForceEvery: a 401 makes no fetch for a token younger than this.
	forceEvery = 10 * time.Second

	ccGrant     = "oauth2.token.client_credentials"
	serviceUser = "svc-orders"
	// wantSiteContext is the x-site-context the sidecars send.
	wantSiteContext = `{"account":"5f689caa4216e7000750d1ef","channel":12}`
)

// TestSidecar runs the sidecar end to end. Subtests run in order and share the processes; the
// emulators are never reset, so that call counts hold since the start.
func TestSidecar(t *testing.T) {
	e := startSidecars(t)
	t.Run("one fetch per token lifetime for the fleet", e.testFleetFetch)
	t.Run("proactive refresh without waiting", e.testProactiveRefresh)
	t.Run("upstream 401: one fresh token and a replay", e.testReplay)
	t.Run("identity outage and recovery", e.testIdentityOutage)
	t.Run("Redis outage", e.testRedisOutage)
	t.Run("header hygiene", e.testHeaders)
	t.Run("service user: refresh, and login when the refresh is refused", e.testServiceUser)
	t.Run("no secret in logs, Redis or metrics", e.testSidecarSecrets)
}

// --- Harness -----------------------------------------------------------------------------------

// sidecar is one sitegate process with its sites.
type sidecar struct {
	*process
	main   string // oauth2 client_credentials, Redis; also serves /metrics
	keep   string // the same identity (and token), with keep_authorization
	replay string // a long-lived token from the second emulator, Redis
	v1     string // a fabric_v1 service user, memory store (process a only)
}

type sidecarEnv struct {
	redis *redistest.Server
	rdb   *redis.Client
	// id issues the fleet's 4s client_credentials tokens and the service user's 4s tokens;
	// slow issues 10-minute tokens to the replay sites, whose tokens are old enough for a 401
	// to force a fetch (service.ForceEvery).
	id, slow             *identityServer
	issued, slowIssued   *issueLog
	up                   *sessUpstream
	procs                []*sidecar
	a, b, c              *sidecar
	clientSecret, secret string // of the fleet's client and of the replay client
	password, apiKey     string
	tokenKey             string
	v1First              string            // the token of the first request through the service user site
	dump                 map[string]string // Redis as it was before its outage
}

// issue is one call to an emulator's token endpoints, as the test saw it.
type issue struct {
	kind            string // ccGrant, v1.login, v1.refresh
	start, at       time.Time
	status          int
	access, refresh string
}

// issueLog records the token calls of one emulator.
type issueLog struct {
	mu   sync.Mutex
	list []issue
}

func (l *issueLog) add(i issue) {
	l.mu.Lock()
	l.list = append(l.list, i)
	l.mu.Unlock()
}

// all returns the calls of kind, answered or not.
func (l *issueLog) all(kind string) []issue {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []issue
	for _, i := range l.list {
		if i.kind == kind {
			out = append(out, i)
		}
	}
	return out
}

// ok returns the calls of kind that issued a token.
func (l *issueLog) ok(kind string) []issue {
	var out []issue
	for _, i := range l.all(kind) {
		if i.status == http.StatusOK && i.access != "" {
			out = append(out, i)
		}
	}
	return out
}

// last returns the last call of kind that issued a token.
func (l *issueLog) last(kind string) issue {
	ok := l.ok(kind)
	if len(ok) == 0 {
		return issue{}
	}
	return ok[len(ok)-1]
}

// find returns the call that issued token.
func (l *issueLog) find(token string) (issue, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, i := range l.list {
		if i.access == token {
			return i, true
		}
	}
	return issue{}, false
}

// startTappedIdentity is startIdentity that also logs every token call with its time.
func startTappedIdentity(t *testing.T, cfg emulator.Config) (*identityServer, *issueLog) {
	t.Helper()
	log := &issueLog{}
	s := startIdentity(t, cfg, func(c identityCall) {
		kind := ""
		switch p := c.r.URL.Path; {
		case strings.HasSuffix(p, "/v1/token"):
			kind = ccGrant // the only grant the sidecars use
		case strings.HasSuffix(p, "/auth/local/login"):
			kind = "v1.login"
		case strings.HasSuffix(p, "/auth/local/refresh"):
			kind = "v1.refresh"
		default:
			return
		}
		log.add(issue{kind: kind, start: c.start, at: time.Now(), status: c.status,
			access: c.tokens.OAuthAccess + c.tokens.V1Access, refresh: c.tokens.OAuthRefresh + c.tokens.V1Refresh})
	})
	return s, log
}

func startSidecars(t *testing.T) *sidecarEnv {
	t.Helper()
	e := &sidecarEnv{
		redis:        redistest.Start(t),
		clientSecret: randomText("client-secret-"),
		secret:       randomText("replay-secret-"),
		password:     randomText("pw-svc-"),
		apiKey:       randomText("api-key-"),
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	e.tokenKey = base64.StdEncoding.EncodeToString(key)
	e.id, e.issued = startTappedIdentity(t, emulator.Config{
		APIKey:              e.apiKey,
		Users:               []emulator.User{{Username: serviceUser, Password: e.password, Account: demoAccount, FirstName: "Orders", LastName: "Worker"}},
		Clients:             []emulator.Client{{ID: "orders-worker", Secret: e.clientSecret}},
		AccessLifetime:      sidecarLifetime,
		ClientTokenLifetime: sidecarLifetime,
	})
	e.slow, e.slowIssued = startTappedIdentity(t, emulator.Config{
		Clients:             []emulator.Client{{ID: "replay-worker", Secret: e.secret}},
		ClientTokenLifetime: 10 * time.Minute,
	})
	e.up = newSessUpstream(t)
	e.rdb = redis.NewClient(&redis.Options{Addr: e.redis.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = e.rdb.Close() })

	dir := t.TempDir()
	for _, name := range []string{"a", "b", "c"} {
		sc := &sidecar{}
		ports := []int{freePort(t), freePort(t), freePort(t), 0}
		if name == "a" {
			ports[3] = freePort(t)
			sc.v1 = fmt.Sprintf("http://127.0.0.1:%d", ports[3])
		}
		sc.main = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		sc.keep = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		sc.replay = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
		sc.process = startProcess(t, dir, name, e.config(ports),
			"SITEGATE_E2E_CLIENT_SECRET="+e.clientSecret,
			"SITEGATE_E2E_REPLAY_SECRET="+e.secret,
			"SITEGATE_E2E_PASSWORD="+e.password,
			"SITEGATE_E2E_API_KEY="+e.apiKey,
			"SITEGATE_E2E_TOKEN_KEY="+e.tokenKey,
		)
		e.procs = append(e.procs, sc)
	}
	e.a, e.b, e.c = e.procs[0], e.procs[1], e.procs[2]
	for _, sc := range e.procs {
		sc.waitReady(t)
	}
	for _, r := range e.up.take() {
		if r.path == "/ready/a/v1" {
			e.v1First = r.bearer()
		}
	}
	return e
}

// config is a sidecar process's Caddyfile; ports are those of its main, keep_authorization,
// replay and (when not 0) service user sites. Each site names reverse_proxy before
// sitegate_service, which orders itself before it (README).
func (e *sidecarEnv) config(ports []int) string {
	site := func(port int, id, store, extra string) string {
		return fmt.Sprintf(`
http://127.0.0.1:%[1]d {
	bind 127.0.0.1
	route /metrics {
		metrics
	}
	reverse_proxy %[2]s
	sitegate_service {
		%[3]s
		%[4]s
		site_context {
			account %[5]s
			channel 12
		}
		%[6]s
	}
}
`, port, e.up.url, id, store, demoAccount, extra)
	}
	fleet := fmt.Sprintf(`identity oauth2 %s/oauth2/aus1 {
			client_id orders-worker
			client_secret {env.SITEGATE_E2E_CLIENT_SECRET}
		}`, e.id.url)
	redisStore := fmt.Sprintf(`store redis redis://%s/0 {
			timeout 500ms
		}
		key {env.SITEGATE_E2E_TOKEN_KEY}`, e.redis.Addr)
	refresh := "refresh_before " + sidecarRefreshBefore.String()
	cfg := `{
	admin off
	persist_config off
	auto_https off
	log {
		output stderr
		format json
		level DEBUG
	}
}
`
	cfg += site(ports[0], fleet, redisStore, refresh)
	cfg += site(ports[1], fleet, redisStore, refresh+"\n\t\tkeep_authorization")
	cfg += site(ports[2], fmt.Sprintf(`identity oauth2 %s/oauth2/aus1 {
			client_id replay-worker
			client_secret {env.SITEGATE_E2E_REPLAY_SECRET}
		}`, e.slow.url), redisStore, "")
	if ports[3] != 0 {
		cfg += site(ports[3], fmt.Sprintf(`identity fabric_v1 %s {
			username %s
			password {env.SITEGATE_E2E_PASSWORD}
			api_key {env.SITEGATE_E2E_API_KEY}
		}`, e.id.url, serviceUser), "store memory", refresh)
	}
	return cfg
}

// waitReady waits until every site of the process forwards a request.
func (sc *sidecar) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	sites := map[string]string{"main": sc.main, "keep": sc.keep, "replay": sc.replay, "v1": sc.v1}
	for _, what := range []string{"main", "keep", "replay", "v1"} {
		base := sites[what]
		if base == "" {
			continue
		}
		for {
			r := do("GET", base+"/ready/"+sc.name+"/"+what, nil, "")
			if r.err == nil && r.status == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sidecar %s (%s) never became ready (%v %d %s):\n%s", sc.name, what, r.err, r.status, r.body, tail(readLog(sc.process), 4000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func readLog(p *process) []byte {
	b, _ := os.ReadFile(p.log)
	return b
}

// ccCalls is the fleet emulator's client_credentials call count since the start.
func (e *sidecarEnv) ccCalls(t *testing.T) int {
	t.Helper()
	return e.id.calls(t).Calls[ccGrant]
}

// quietAt reports whether the fleet's last fetch is old enough for every instance to have its
// token (300ms), and young enough for the next fetch to be at least 700ms away.
func (e *sidecarEnv) quietAt() bool {
	since := e.sinceLastFetch()
	return since >= 300*time.Millisecond && since <= sidecarRefreshEvery-700*time.Millisecond
}

// quiet waits for a quiet moment (quietAt).
func (e *sidecarEnv) quiet(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(3 * sidecarLifetime)
	for {
		if e.quietAt() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no quiet moment: the last fetch was at %v", e.issued.last(ccGrant).at)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sinceLastFetch is how long ago the fleet's last token was issued.
func (e *sidecarEnv) sinceLastFetch() time.Duration { return time.Since(e.issued.last(ccGrant).at) }

// shot is one request of a load run.
type shot struct {
	proc       string
	path       string
	sent, done time.Time
	r          resp
	bearer     string // what the upstream saw, for forwarded requests
}

func (s *shot) took() time.Duration { return s.done.Sub(s.sent) }

// hammer sends GETs to the main site of every sidecar, two workers each with a 25ms pause,
// until stop (called on this goroutine every 10ms with the requests so far) says so or limit
// has passed; it reports whether stop did. Then it matches the forwarded requests with what the
// upstream saw, and takes the upstream's record.
func (e *sidecarEnv) hammer(t *testing.T, tag string, limit time.Duration, stop func(got []*shot) bool) ([]*shot, bool) {
	t.Helper()
	var (
		mu    sync.Mutex
		shots []*shot
		wg    sync.WaitGroup
	)
	done := make(chan struct{})
	for _, sc := range e.procs {
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-done:
						return
					default:
					}
					s := &shot{proc: sc.name, path: fmt.Sprintf("/%s/%s/%d/%d", tag, sc.name, w, i), sent: time.Now()}
					s.r = do("GET", sc.main+s.path, nil, "")
					s.done = time.Now()
					mu.Lock()
					shots = append(shots, s)
					mu.Unlock()
					time.Sleep(25 * time.Millisecond)
				}
			}()
		}
	}
	start, stopped := time.Now(), false
	for time.Since(start) < limit {
		mu.Lock()
		got := shots[:len(shots):len(shots)]
		mu.Unlock()
		if stop(got) {
			stopped = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(done)
	wg.Wait()
	byPath := map[string][]seen{}
	for _, r := range e.up.take() {
		byPath[r.path] = append(byPath[r.path], r)
	}
	for _, s := range shots {
		got := byPath[s.path]
		switch {
		case s.r.err == nil && s.r.status == http.StatusOK && len(got) == 1:
			s.bearer = got[0].bearer()
		case s.r.err == nil && s.r.status == http.StatusOK:
			t.Errorf("%s: answered 200, but the upstream saw it %d times", s.path, len(got))
		case len(got) != 0:
			t.Errorf("%s: answered %d %v, but reached the upstream", s.path, s.r.status, s.r.err)
		}
	}
	return shots, stopped
}

// checkShots fails on any answer but the upstream's 200, and on a token that the emulator did not
// issue or that had expired (by its exp) when the request was sent.
func (e *sidecarEnv) checkShots(t *testing.T, shots []*shot) {
	t.Helper()
	bad := 0
	var late expiredUse
	for _, s := range shots {
		if s.r.err != nil || s.r.status != http.StatusOK || s.r.body != "upstream" {
			if bad++; bad <= 5 {
				t.Errorf("%s: %v %d %s", s.path, s.r.err, s.r.status, s.r.body)
			}
			continue
		}
		e.checkToken(t, s, &late)
	}
	if bad > 5 {
		t.Errorf("... %d failed requests of %d", bad, len(shots))
	}
	late.report(t)
}

// expiredUse collects the requests forwarded with a token past its exp.
type expiredUse struct {
	n     int
	worst time.Duration
	first string
}

// report fails the test when a token was sent after its exp: the README says "an expired token
// is never sent".
func (x *expiredUse) report(t *testing.T) {
	t.Helper()
	if x.n > 0 {
		t.Errorf("%d requests were forwarded with a token past its exp, up to %v past it; first: %s", x.n, x.worst.Round(time.Millisecond), x.first)
	}
}

// checkToken checks that a forwarded request carried a client_credentials token of the fleet's
// emulator that had not expired when it was sent.
func (e *sidecarEnv) checkToken(t *testing.T, s *shot, late *expiredUse) {
	t.Helper()
	i, ok := e.issued.find(s.bearer)
	if !ok || i.kind != ccGrant {
		t.Errorf("%s: the upstream saw a token the emulator did not issue: %.20s…", s.path, s.bearer)
		return
	}
	if exp := jwtExp(t, s.bearer); !s.sent.Before(exp) {
		if late.n++; late.n == 1 {
			late.first = fmt.Sprintf("%s sent at %s with a token whose exp is %s; the token was issued at %s, with expires_in %v",
				s.path, s.sent.Format("15:04:05.000"), exp.Format("15:04:05"), i.at.Format("15:04:05.000"), sidecarLifetime)
		}
		late.worst = max(late.worst, s.sent.Sub(exp))
	}
}

// tokensOf returns the distinct tokens the forwarded shots carried, per process.
func tokensOf(shots []*shot) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, s := range shots {
		if s.bearer == "" {
			continue
		}
		if out[s.proc] == nil {
			out[s.proc] = map[string]bool{}
		}
		out[s.proc][s.bearer] = true
	}
	return out
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// --- Subtests ----------------------------------------------------------------------------------

func (e *sidecarEnv) testFleetFetch(t *testing.T) {
	e.up.take()
	e.quiet(t)
	before := e.issued.ok(ccGrant)
	cur := before[len(before)-1].access
	c0 := e.ccCalls(t)
	start := time.Now()
	shots, stopped := e.hammer(t, "fleet", 3*sidecarLifetime+2*sidecarRefreshEvery, func([]*shot) bool {
		return time.Since(start) >= 3*sidecarLifetime && e.quietAt()
	})
	elapsed := time.Since(start)
	if !stopped {
		t.Fatal("no quiet moment to stop at")
	}
	c1 := e.ccCalls(t)
	after := e.issued.ok(ccGrant)
	fresh := after[len(before):]
	e.checkShots(t, shots)
	if t.Failed() {
		return
	}

	// Every fetch is one the emulator counted, and none failed.
	if n := len(e.issued.all(ccGrant)); n != len(after) || c1-c0 != len(fresh) {
		t.Errorf("the emulator counted %d client_credentials calls during the run, the tap saw %d tokens (%d calls, %d with a token)",
			c1-c0, len(fresh), n, len(after))
	}
	// The fetches made during the run, plus the token in use when it started, are the tokens
	// the upstream saw: every token fetched was used, by all three instances.
	seenBy := tokensOf(shots)
	distinct := map[string]bool{}
	for _, toks := range seenBy {
		for tok := range toks {
			distinct[tok] = true
		}
	}
	if len(distinct) != len(fresh)+1 || !distinct[cur] {
		t.Errorf("the upstream saw %d distinct tokens (the one in use at the start among them: %t); %d fetches were made during the run",
			len(distinct), distinct[cur], len(fresh))
	}
	for _, i := range append([]issue{before[len(before)-1]}, fresh...) {
		for _, sc := range e.procs {
			if !seenBy[sc.name][i.access] {
				t.Errorf("instance %s never used the token fetched at %s", sc.name, i.at.Format("15:04:05.000"))
			}
		}
	}
	// One fetch per token lifetime for the whole fleet, not one per instance.
	if most := int(elapsed/sidecarRefreshEvery) + 1; len(fresh) > most || len(fresh) < int(elapsed/sidecarLifetime) {
		t.Errorf("%d fetches in %v; want one per %v for the fleet (%d to %d)", len(fresh), elapsed.Round(time.Millisecond),
			sidecarRefreshEvery, int(elapsed/sidecarLifetime), most)
	}
	// Since the fleet started (all three at once), fetches were never closer than a refresh period allows.
	for k := 1; k < len(after); k++ {
		if gap := after[k].at.Sub(after[k-1].at); gap < sidecarRefreshEvery-time.Second {
			t.Errorf("fetches %d and %d were %v apart: two instances fetched for the same refresh", k-1, k, gap)
		}
	}
	// The three instances switch together: at most two tokens in any 200ms.
	sort.Slice(shots, func(i, j int) bool { return shots[i].sent.Before(shots[j].sent) })
	for i := range shots {
		in := map[string]bool{}
		for j := i; j < len(shots) && shots[j].sent.Sub(shots[i].sent) <= 200*time.Millisecond; j++ {
			in[shots[j].bearer] = true
		}
		if len(in) > 2 {
			t.Errorf("%d distinct tokens within 200ms after %s", len(in), shots[i].sent.Format("15:04:05.000"))
			break
		}
	}
	// How close to its exp a token was last used, for the log.
	margin := time.Hour
	for _, s := range shots {
		margin = min(margin, jwtExp(t, s.bearer).Sub(s.done))
	}
	t.Logf("%d requests in %v; %d fetches; %d distinct tokens; closest use to a token's exp: %v before it",
		len(shots), elapsed.Round(time.Millisecond), len(fresh), len(distinct), margin.Round(time.Millisecond))
}

func (e *sidecarEnv) testProactiveRefresh(t *testing.T) {
	e.up.take()
	e.quiet(t)
	old := e.issued.last(ccGrant)
	n0, c0 := len(e.issued.ok(ccGrant)), e.ccCalls(t)
	// Identity takes 700ms to answer: well inside the 2s refresh window.
	e.id.fault(t, `{"endpoint":"`+ccGrant+`","latency":"700ms"}`)
	defer e.id.clearFaults(t)
	shots, stopped := e.hammer(t, "slow", 2*sidecarLifetime, func([]*shot) bool {
		ok := e.issued.ok(ccGrant)
		return len(ok) > n0 && time.Since(ok[len(ok)-1].at) >= 300*time.Millisecond
	})
	e.id.clearFaults(t)
	if !stopped {
		t.Fatal("the token was not refreshed")
	}
	e.checkShots(t, shots)
	fresh := e.issued.ok(ccGrant)[n0:]
	if len(fresh) != 1 || e.ccCalls(t)-c0 != 1 {
		t.Fatalf("%d tokens issued (%d calls) through the slow refresh; want 1", len(fresh), e.ccCalls(t)-c0)
	}
	f := fresh[0]
	if took := f.at.Sub(f.start); took < 700*time.Millisecond {
		t.Errorf("the fetch took %v: the latency fault did not apply", took)
	}
	slowest := time.Duration(0)
	for _, s := range shots {
		slowest = max(slowest, s.took())
	}
	if slowest > 300*time.Millisecond {
		t.Errorf("a request took %v while the token was refreshed; requests must not wait for Identity", slowest)
	}
	oldExp := jwtExp(t, old.access)
	if !f.at.Before(oldExp) {
		t.Errorf("the new token arrived at %s, after the old one expired at %s", f.at.Format("15:04:05.000"), oldExp.Format("15:04:05.000"))
	}
	seenBy := tokensOf(shots)
	for _, sc := range e.procs {
		if len(seenBy[sc.name]) != 2 || !seenBy[sc.name][old.access] || !seenBy[sc.name][f.access] {
			t.Errorf("instance %s used %d tokens; want the old one, then the new one", sc.name, len(seenBy[sc.name]))
		}
	}
	for _, s := range shots {
		if s.bearer == old.access && s.sent.After(f.at.Add(300*time.Millisecond)) {
			t.Errorf("%s: the old token was still sent %v after the new one arrived", s.path, s.sent.Sub(f.at))
			break
		}
	}
	t.Logf("%d requests, slowest %v; the fetch took %v and ended %v before the old token's exp",
		len(shots), slowest.Round(time.Millisecond), f.at.Sub(f.start).Round(time.Millisecond), oldExp.Sub(f.at).Round(time.Millisecond))
}

// replies returns the requests the upstream saw for path, in order.
func replies(reqs []seen, path string) []seen {
	var out []seen
	for _, r := range reqs {
		if r.path == path {
			out = append(out, r)
		}
	}
	return out
}

func (e *sidecarEnv) testReplay(t *testing.T) {
	first := e.slowIssued.ok(ccGrant)
	if len(first) != 1 || len(e.slowIssued.all(ccGrant)) != 1 {
		t.Fatalf("the replay sites fetched %d tokens at start; want one for the fleet", len(e.slowIssued.all(ccGrant)))
	}
	old := first[0].access
	// A 401 forces a fetch only for a token older than service.ForceEvery.
	sleepUntil(first[0].at.Add(forceEvery + 300*time.Millisecond))
	e.up.take()
	replays := map[string]float64{}
	for _, sc := range e.procs {
		replays[sc.name] = metric(t, sc.main, "sitegate_service_401_replays_total")
	}
	calls := func() int { return e.slow.calls(t).Calls[ccGrant] }
	c0 := calls()
	text := http.Header{"Content-Type": {"text/plain"}}

	// refusedThrough checks the upstream's 401 passed through, after one request with wantBearer
	// (any token the fleet's emulator issued when "").
	refusedThrough := func(t *testing.T, r resp, path, wantBearer string, bodyLen int) {
		t.Helper()
		if r.err != nil || r.status != http.StatusUnauthorized || r.body != "upstream refused" ||
			r.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Errorf("%s: want the upstream's 401 passed through, got %v %d %v %s", path, r.err, r.status, r.header, r.body)
		}
		got := replies(e.up.take(), path)
		if len(got) != 1 || len(got[0].body) != bodyLen ||
			(wantBearer != "" && got[0].bearer() != wantBearer) || (wantBearer == "" && !e.id.wasIssued(got[0].bearer())) {
			t.Errorf("%s: the upstream saw %d requests; want one, with the current token and the whole body", path, len(got))
		}
	}

	// A body over 64 KiB is not buffered: the 401 stands, and no fetch is made.
	big := strings.Repeat("0123456789abcdef", 70<<10/16)
	refusedThrough(t, do("POST", e.a.replay+"/once401/big", text, big), "/once401/big", old, len(big))

	replayed := func(t *testing.T, sc *sidecar, method, path, body string) string {
		t.Helper()
		r := do(method, sc.replay+path, text, body)
		if r.err != nil || r.status != http.StatusOK || r.body != "upstream" {
			t.Fatalf("%s %s on %s: want the replay's 200, got %v %d %s", method, path, sc.name, r.err, r.status, r.body)
		}
		got := replies(e.up.take(), path)
		if len(got) != 2 {
			t.Fatalf("%s: the upstream saw %d requests; want the refused one and its replay", path, len(got))
		}
		if got[0].bearer() != old || got[1].bearer() == old || !e.slow.wasIssued(got[1].bearer()) {
			t.Errorf("%s: sent with the old token: %t, then with a new token the emulator issued: %t",
				path, got[0].bearer() == old, got[1].bearer() != old && e.slow.wasIssued(got[1].bearer()))
		}
		for k, g := range got {
			if g.method != method || g.body != body || len(g.header.Values("Authorization")) != 1 ||
				g.header.Get("X-Site-Context") != wantSiteContext {
				t.Errorf("%s: request %d arrived as %s with %d bytes (want %d), Authorization %d times, x-site-context %q",
					path, k+1, g.method, len(g.body), len(body), len(g.header.Values("Authorization")), g.header.Get("X-Site-Context"))
			}
		}
		return got[1].bearer()
	}
	fresh := replayed(t, e.a, "GET", "/once401/get", "")
	if n := calls() - c0; n != 1 {
		t.Errorf("%d fetches for the first 401; want 1", n)
	}
	// The other replicas saw the same token refused: they take the new one from Redis.
	if got := replayed(t, e.b, "POST", "/once401/post", `{"order":"A-1001","lines":[{"sku":"X1","qty":3}]}`); got != fresh {
		t.Errorf("b replayed with another token than a fetched")
	}
	edge := strings.Repeat("z", 64<<10) // at most 64 KiB is replayed
	if got := replayed(t, e.c, "POST", "/once401/edge", edge); got != fresh {
		t.Errorf("c replayed with another token than a fetched")
	}
	if n := calls() - c0; n != 1 {
		t.Errorf("%d fetches for three replicas' 401s on the same token; want 1", n)
	}
	for _, sc := range e.procs {
		if got := metric(t, sc.main, "sitegate_service_401_replays_total"); got != replays[sc.name]+1 {
			t.Errorf("%s: sitegate_service_401_replays_total went from %v to %v; want one more", sc.name, replays[sc.name], got)
		}
	}
	// Within 10s, another 401 is the upstream's answer, on any replica: the token is new.
	refusedThrough(t, do("GET", e.a.replay+"/once401/second", nil, ""), "/once401/second", fresh, 0)
	refusedThrough(t, do("POST", e.b.replay+"/once401/third", text, "small"), "/once401/third", fresh, len("small"))
	if n := calls() - c0; n != 1 {
		t.Errorf("%d fetches after the rate-limited 401s; want still 1", n)
	}
	if got := metric(t, e.a.main, "sitegate_service_401_replays_total"); got != replays["a"]+1 {
		t.Errorf("a rate-limited 401 counted as a replay")
	}
	// A 401 for a token fetched less than 10s ago stands even where no fetch was ever forced:
	// the fleet's 4s tokens are never replaced for a 401.
	mainReplays := metric(t, e.a.main, "sitegate_service_401_replays_total")
	refusedThrough(t, do("GET", e.a.main+"/once401/young", nil, ""), "/once401/young", "", 0)
	if got := metric(t, e.a.main, "sitegate_service_401_replays_total"); got != mainReplays {
		t.Errorf("a 401 for a token younger than 10s was replayed")
	}
	e.dump = e.redisDump(t)
}

// retryAfter returns the Retry-After of a 503, in seconds.
func retryAfter(t *testing.T, s *shot) int {
	t.Helper()
	v, err := strconv.Atoi(s.r.header.Get("Retry-After"))
	if err != nil {
		t.Errorf("%s: Retry-After %q", s.path, s.r.header.Get("Retry-After"))
	}
	return v
}

func (e *sidecarEnv) testIdentityOutage(t *testing.T) {
	e.up.take()
	e.quiet(t)
	// Identity goes down shortly before the next refresh point: the token runs out soon.
	last := e.issued.last(ccGrant)
	sleepUntil(last.at.Add(sidecarRefreshEvery - 700*time.Millisecond))
	if e.issued.last(ccGrant).access != last.access {
		t.Fatal("the token was refreshed early")
	}
	unavailable := map[string]float64{}
	for _, sc := range e.procs {
		unavailable[sc.name] = metric(t, sc.main, `sitegate_service_requests_total{outcome="identity_unavailable"}`)
	}
	n0 := len(e.issued.all(ccGrant))
	e.id.fault(t, `{"endpoint":"`+ccGrant+`","status":503}`)
	faultAt := time.Now()
	faulted := true
	defer func() {
		if faulted {
			e.id.clearFaults(t)
		}
	}()
	var clearedAt time.Time
	attempts := 0
	shots, stopped := e.hammer(t, "outage", 45*time.Second, func(got []*shot) bool {
		first := map[string]time.Time{} // each instance's first 503
		recovered := map[string]bool{}
		for _, s := range got {
			switch {
			case s.r.status == http.StatusServiceUnavailable && first[s.proc].IsZero():
				first[s.proc] = s.sent
			case s.r.status == http.StatusOK && !faulted && s.sent.After(clearedAt):
				recovered[s.proc] = true
			}
		}
		if faulted {
			if len(first) < len(e.procs) {
				return false
			}
			for _, at := range first {
				if time.Since(at) < 2*time.Second {
					return false
				}
			}
			attempts = len(e.issued.all(ccGrant)) - n0
			e.id.clearFaults(t)
			faulted, clearedAt = false, time.Now()
			return false
		}
		return len(recovered) == len(e.procs)
	})
	if !stopped {
		t.Fatalf("no recovery within %v (cleared: %t)", 45*time.Second, !faulted)
	}
	outage := clearedAt.Sub(faultAt)

	byProc := map[string][]*shot{}
	for _, s := range shots {
		byProc[s.proc] = append(byProc[s.proc], s)
	}
	lastExp := jwtExp(t, last.access)
	failed := 0
	var late expiredUse
	for _, sc := range e.procs {
		list := byProc[sc.name]
		sort.Slice(list, func(i, j int) bool { return list[i].sent.Before(list[j].sent) })
		var last503 *shot
		phase := "before" // before the first 503, during the outage, after recovery
		var recoveredAt time.Time
		for _, s := range list {
			switch {
			case s.r.err != nil:
				t.Errorf("%s: %v", s.path, s.r.err)
			case s.r.status == http.StatusServiceUnavailable:
				failed++
				var body struct{ Error, Code, Message string }
				_ = json.Unmarshal([]byte(s.r.body), &body)
				if ra := retryAfter(t, s); body.Error != "IDENTITY_UNAVAILABLE" || body.Code != "503" || ra < 1 || ra > 31 ||
					!strings.HasPrefix(s.r.header.Get("Content-Type"), "application/json") {
					t.Errorf("%s: 503 %q Retry-After %d %s; want IDENTITY_UNAVAILABLE with a Retry-After of 1 to 31s", s.path, s.r.header.Get("Content-Type"), ra, s.r.body)
				}
				if s.done.Before(lastExp) {
					t.Errorf("%s: 503 at %s while the token was valid until %s", s.path, s.done.Format("15:04:05.000"), lastExp.Format("15:04:05.000"))
				}
				if phase == "after" {
					t.Errorf("%s: 503 after the instance had recovered", s.path)
				}
				phase = "during"
				if s.sent.Before(clearedAt) {
					last503 = s
				}
			case s.r.status == http.StatusOK:
				e.checkToken(t, s, &late)
				if phase == "during" && s.sent.Before(clearedAt) {
					t.Errorf("%s: 200 during the outage after a 503", s.path)
				}
				if phase == "during" && recoveredAt.IsZero() {
					recoveredAt = s.sent
					phase = "after"
				}
			default:
				t.Errorf("%s: %d %s", s.path, s.r.status, s.r.body)
			}
		}
		if last503 == nil || recoveredAt.IsZero() {
			t.Errorf("instance %s: no 503 during the outage, or no recovery", sc.name)
			continue
		}
		// Recovery without a restart, by the time the last 503 said to retry.
		promised := last503.done.Add(time.Duration(retryAfter(t, last503))*time.Second + time.Second)
		if recoveredAt.After(promised) || recoveredAt.Sub(clearedAt) > 30*time.Second {
			t.Errorf("instance %s recovered %v after Identity did; its last 503 said Retry-After %s",
				sc.name, recoveredAt.Sub(clearedAt).Round(time.Millisecond), last503.r.header.Get("Retry-After"))
		}
		t.Logf("instance %s: last 503 Retry-After %ss, recovered %v after Identity", sc.name,
			last503.r.header.Get("Retry-After"), recoveredAt.Sub(clearedAt).Round(time.Millisecond))
		if got := metric(t, sc.main, `sitegate_service_requests_total{outcome="identity_unavailable"}`); got <= unavailable[sc.name] {
			t.Errorf("%s: sitegate_service_requests_total{outcome=\"identity_unavailable\"} did not grow", sc.name)
		}
	}
	// The token was sent while it was valid, and never after its exp.
	late.report(t)
	// Fetches during the outage back off: each instance retries after 1s, 1-2s, 2-4s, 4-8s...
	most := len(e.procs) * (2 + int(math.Ceil(math.Log2(outage.Seconds()))))
	if attempts < len(e.procs) || attempts > most || attempts*10 > failed {
		t.Errorf("%d token calls in a %v outage, for %d refused requests; want %d to %d, and far fewer than the requests",
			attempts, outage.Round(time.Millisecond), failed, len(e.procs), most)
	}
	t.Logf("outage of %v: %d token calls, %d requests answered 503", outage.Round(time.Millisecond), attempts, failed)
	if n := metric(t, e.a.main, `sitegate_service_token_fetches_total{dialect="oauth2",result="unavailable"}`); n == 0 {
		t.Error(`no sitegate_service_token_fetches_total{dialect="oauth2",result="unavailable"}`)
	}
}

func (e *sidecarEnv) testRedisOutage(t *testing.T) {
	e.up.take()
	e.quiet(t)
	n0 := len(e.issued.ok(ccGrant))
	e.redis.Stop()
	stopped := true
	defer func() {
		if stopped {
			e.redis.Restart()
		}
	}()
	// Across a refresh point, every instance fetches for itself and goes on serving.
	shots, done := e.hammer(t, "redis-down", 2*sidecarLifetime, func([]*shot) bool {
		return len(e.issued.ok(ccGrant)) >= n0+len(e.procs) && e.sinceLastFetch() >= 500*time.Millisecond
	})
	e.checkShots(t, shots)
	if !done {
		t.Fatalf("%d fetches while Redis was down; want one per instance", len(e.issued.ok(ccGrant))-n0)
	}
	down := e.issued.ok(ccGrant)[n0:]
	// Each instance fetches on its own schedule while they cannot coordinate; an instance may
	// come round to a second fetch before the last one reaches its first (seen once in eight
	// runs), but never more.
	if len(down) < len(e.procs) || len(down) > 2*len(e.procs) {
		t.Errorf("%d fetches at the refresh point while Redis was down; want one or two per instance", len(down))
	}
	t.Logf("%d fetches while Redis was down", len(down))
	own := map[string]bool{}
	for _, sc := range e.procs {
		var lastTok string
		for _, s := range shots {
			if s.proc == sc.name && s.bearer != "" {
				lastTok = s.bearer
			}
		}
		if own[lastTok] || !slices.ContainsFunc(down, func(i issue) bool { return i.access == lastTok }) {
			t.Errorf("instance %s ended the outage with a token it did not fetch itself", sc.name)
		}
		own[lastTok] = true
		if !strings.Contains(string(readLog(sc.process)), "service token store unavailable; fetching without it") {
			t.Errorf("instance %s did not log that it fetched without the store", sc.name)
		}
	}

	// Redis comes back empty; at the next refresh point the instances share again.
	e.redis.Restart()
	stopped = false
	restarted := time.Now()
	shots, done = e.hammer(t, "redis-back", 3*sidecarLifetime, func([]*shot) bool {
		return time.Since(restarted) >= sidecarRefreshEvery+500*time.Millisecond && e.quietAt()
	})
	e.checkShots(t, shots)
	if !done {
		t.Fatal("no quiet moment after Redis came back")
	}
	n1, c1 := len(e.issued.ok(ccGrant)), e.ccCalls(t)
	cur := e.issued.last(ccGrant).access
	shots, done = e.hammer(t, "shared-again", 2*sidecarLifetime, func([]*shot) bool {
		return len(e.issued.ok(ccGrant)) > n1 && e.sinceLastFetch() >= 300*time.Millisecond
	})
	e.checkShots(t, shots)
	if !done {
		t.Fatal("no refresh after Redis came back")
	}
	fresh := e.issued.ok(ccGrant)[n1:]
	if len(fresh) != 1 || e.ccCalls(t)-c1 != 1 {
		t.Errorf("%d fetches (%d calls) at a refresh point after Redis came back; want one for the fleet", len(fresh), e.ccCalls(t)-c1)
	}
	seenBy := tokensOf(shots)
	for _, sc := range e.procs {
		if len(seenBy[sc.name]) != 2 || !seenBy[sc.name][cur] || !seenBy[sc.name][fresh[0].access] {
			t.Errorf("instance %s used %d tokens after Redis came back; want the shared one, then the next shared one", sc.name, len(seenBy[sc.name]))
		}
	}
	keys, err := e.rdb.Keys(context.Background(), "*").Result()
	if err != nil || len(keys) == 0 {
		t.Errorf("Redis holds no token record after it came back: %v %v", keys, err)
	}
}

func (e *sidecarEnv) testHeaders(t *testing.T) {
	e.up.take()
	appToken := "app-own-" + randomText("")
	spoofed := http.Header{
		"X-Site-Context":      {`{"channel":99}`},
		"X_site_context":      {`{"account":"000000000000000000000000"}`},
		"X-Fabric-Tenant-Id":  {"000000000000000000000000"},
		"X_fabric_channel_id": {"99"},
		"Connection":          {"X-Site-Context, X-Hop, x_fabric_tenant_id"},
		"X-Hop":               {"hop-by-hop"},
		"X-App":               {"kept"},
	}
	with := func(h http.Header, auth string) http.Header {
		h = h.Clone()
		if auth != "" {
			h.Set("Authorization", auth)
		}
		return h
	}
	forwarded := func(t *testing.T, base, path string, h http.Header) seen {
		t.Helper()
		r := do("GET", base+path, h, "")
		if r.err != nil || r.status != http.StatusOK || r.body != "upstream" {
			t.Fatalf("%s: %v %d %s", path, r.err, r.status, r.body)
		}
		got := replies(e.up.take(), path)
		if len(got) != 1 {
			t.Fatalf("%s: the upstream saw %d requests", path, len(got))
		}
		g := got[0]
		for name, vs := range g.header {
			folded := strings.ReplaceAll(strings.ToLower(name), "_", "-")
			switch {
			case folded == "x-site-context" && (name != "X-Site-Context" || len(vs) != 1 || vs[0] != wantSiteContext):
				t.Errorf("%s: the upstream got %s: %q; want only x-site-context %s", path, name, vs, wantSiteContext)
			case folded == "x-fabric-tenant-id", folded == "x-fabric-channel-id", folded == "x-hop":
				t.Errorf("%s: the upstream got %s: %q", path, name, vs)
			}
		}
		if g.header.Get("X-Site-Context") != wantSiteContext {
			t.Errorf("%s: x-site-context %q; want %s", path, g.header.Get("X-Site-Context"), wantSiteContext)
		}
		if g.header.Get("X-App") != "kept" {
			t.Errorf("%s: the application's own header was dropped", path)
		}
		return g
	}
	serviceToken := func(t *testing.T, path string, g seen) {
		t.Helper()
		auth := g.header.Values("Authorization")
		if i, ok := e.issued.find(g.bearer()); len(auth) != 1 || !ok || i.kind != ccGrant {
			t.Errorf("%s: Authorization %d times (the service token: %t); want exactly the service token", path, len(auth), ok && i.kind == ccGrant)
		}
		for _, vs := range g.header {
			for _, v := range vs {
				if strings.Contains(v, appToken) {
					t.Errorf("%s: the application's Authorization reached the upstream", path)
				}
			}
		}
	}
	for _, sc := range e.procs {
		p := "/headers/" + sc.name
		serviceToken(t, p+"/main", forwarded(t, sc.main, p+"/main", with(spoofed, "Bearer "+appToken)))
		serviceToken(t, p+"/main-lower", forwarded(t, sc.main, p+"/main-lower", with(spoofed, "bearer "+appToken)))
		serviceToken(t, p+"/main-none", forwarded(t, sc.main, p+"/main-none", spoofed))
		// keep_authorization: the application's own Authorization passes untouched, alone.
		g := forwarded(t, sc.keep, p+"/keep", with(spoofed, "Bearer "+appToken))
		if auth := g.header.Values("Authorization"); len(auth) != 1 || auth[0] != "Bearer "+appToken {
			t.Errorf("%s: keep_authorization forwarded Authorization %d times; want the application's, untouched", p+"/keep", len(auth))
		}
		// Without one, the keep_authorization site adds the service token.
		serviceToken(t, p+"/keep-none", forwarded(t, sc.keep, p+"/keep-none", spoofed))
	}
	if n := metric(t, e.a.main, `sitegate_service_requests_total{outcome="passthrough"}`); n < 1 {
		t.Error(`sitegate_service_requests_total{outcome="passthrough"} did not count the kept Authorization`)
	}
}

func (e *sidecarEnv) testServiceUser(t *testing.T) {
	logins := e.issued.ok("v1.login")
	if len(logins) != 1 || len(e.issued.all("v1.login")) != 1 {
		t.Fatalf("%d service user logins since the start; want 1", len(e.issued.all("v1.login")))
	}
	if e.v1First != logins[0].access {
		t.Errorf("the first request through the service user site did not carry the login's token")
	}
	// Since the start (more than ten token lifetimes ago), the token was refreshed, never
	// logged in again, and no refresh token was presented twice.
	calls := e.id.calls(t)
	refreshes := e.issued.ok("v1.refresh")
	if calls.Calls["v1.login"] != 1 || len(refreshes) < 5 || calls.Calls["v1.refresh"] != len(refreshes) || calls.RefreshTokenReuse != 0 {
		t.Errorf("calls %v (reuse %d), %d refreshes issued a token; want one login and many refreshes", calls.Calls, calls.RefreshTokenReuse, len(refreshes))
	}
	for k := 1; k < len(refreshes); k++ {
		if gap := refreshes[k].at.Sub(refreshes[k-1].at); gap < sidecarRefreshEvery-time.Second {
			t.Errorf("service user refreshes %v apart", gap)
		}
	}
	use := func(t *testing.T, path string) string {
		t.Helper()
		r := do("GET", e.a.v1+path, nil, "")
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("%s: %v %d %s", path, r.err, r.status, r.body)
		}
		got := replies(e.up.take(), path)
		if len(got) != 1 || got[0].header.Get("X-Site-Context") != wantSiteContext {
			t.Fatalf("%s: the upstream saw %d requests", path, len(got))
		}
		return got[0].bearer()
	}
	e.up.take()
	if tok := use(t, "/v1user/current"); tok != e.issued.last("v1.refresh").access && tok != e.issued.ok("v1.refresh")[max(0, len(e.issued.ok("v1.refresh"))-2)].access {
		t.Errorf("the service user site sent a token that is not the last refreshed one")
	}

	// Identity refuses the next refresh (as for a revoked refresh token): the sidecar logs in.
	e.id.fault(t, `{"endpoint":"v1.refresh","reject":true,"times":1}`)
	defer e.id.clearFaults(t)
	waitFor(t, "a second login", 2*sidecarLifetime, func() bool { return len(e.issued.ok("v1.login")) == 2 })
	relogin := e.issued.last("v1.login")
	var refused *issue
	for _, r := range e.issued.all("v1.refresh") {
		if r.at.Before(relogin.start) {
			refused = &r
		}
	}
	if refused == nil || refused.status != http.StatusBadRequest {
		t.Errorf("the refresh before the second login was not the refused one: %+v", refused)
	}
	waitFor(t, "the token of the new login in use", sidecarLifetime, func() bool {
		return use(t, fmt.Sprintf("/v1user/after-login/%d", time.Now().UnixNano())) == relogin.access
	})
	// Then refreshes go on from the new login.
	n := len(e.issued.ok("v1.refresh"))
	waitFor(t, "a refresh after the login", 2*sidecarLifetime, func() bool { return len(e.issued.ok("v1.refresh")) > n })
	if c := e.id.calls(t); c.Calls["v1.login"] != 2 || c.RefreshTokenReuse != 0 {
		t.Errorf("calls %v (reuse %d); want two logins in all", c.Calls, c.RefreshTokenReuse)
	}
	if got := use(t, "/v1user/refreshed"); got != e.issued.last("v1.refresh").access {
		t.Errorf("the service user site does not send the refreshed token")
	}
	if n := metric(t, e.a.main, `sitegate_service_token_fetches_total{dialect="fabric_v1",result="ok"}`); n < 3 {
		t.Errorf(`sitegate_service_token_fetches_total{dialect="fabric_v1",result="ok"} is %v`, n)
	}
}

// redisDump returns every string key of Redis with its value.
func (e *sidecarEnv) redisDump(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	iter := e.rdb.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		switch typ := e.rdb.Type(ctx, key).Val(); typ {
		case "string":
			v, err := e.rdb.Get(ctx, key).Result()
			if err == redis.Nil {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			out[key] = v
		case "none":
		default:
			t.Errorf("unexpected %s key %q", typ, key)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *sidecarEnv) testSidecarSecrets(t *testing.T) {
	secrets := []string{e.clientSecret, e.secret, e.password, e.apiKey, e.tokenKey}
	tokens := append(e.id.tokens(), e.slow.tokens()...)
	if len(tokens) < 20 {
		t.Fatalf("only %d tokens to look for; the scan would prove little", len(tokens))
	}
	secrets = append(secrets, tokens...)
	check := func(where, text string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s holds a secret (%.12s…)", where, s)
			}
		}
		if strings.Contains(text, "eyJhbGci") {
			t.Errorf("%s holds something like a JWT", where)
		}
	}

	dumps := []map[string]string{e.dump, e.redisDump(t)}
	records := 0
	for _, d := range dumps {
		for k, v := range d {
			check("Redis key "+k, k)
			check("Redis value of "+k, v)
			records++
		}
	}
	if len(dumps[0]) < 2 || len(dumps[1]) < 1 {
		t.Errorf("Redis held %d and %d keys; want the two shared token records, then the fleet's", len(dumps[0]), len(dumps[1]))
	}

	for _, sc := range e.procs {
		r := do("GET", sc.main+"/metrics", nil, "")
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("metrics of %s: %v %d", sc.name, r.err, r.status)
		}
		want := []string{
			`sitegate_service_requests_total{outcome="ok"}`,
			`sitegate_service_token_fetches_total{dialect="oauth2",result="ok"}`,
			`sitegate_service_token_age_at_refresh_seconds_count`,
			`sitegate_service_401_replays_total`,
		}
		if sc == e.a {
			want = append(want, `sitegate_service_token_fetches_total{dialect="fabric_v1",result="ok"}`)
		}
		for _, w := range want {
			if !strings.Contains(r.body, w) {
				t.Errorf("%s metrics lack %s", sc.name, w)
			}
		}
		check(sc.name+" metrics", r.body)
		logs := readLogs(t, sc.log)
		check(sc.name+" log", logs)
		for _, word := range []string{"panic", "DATA RACE"} {
			if strings.Contains(logs, word) {
				t.Errorf("%s log mentions %q", sc.name, word)
			}
		}
	}
}
