package service

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sitegate/sitegate/internal/redistest"
	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/upstream"
)

const testID = "service:oauth2:https://idp.example/oauth2/aus1:client-1"

// clock is the real clock, which a test can move forward (for the 10s rule of Invalidate).
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration) { c.off.Add(int64(d)) }

// idp is a fake Identity behind a FetchFunc: it counts calls, records the prev it was given, and
// hands out numbered JWT-less tokens that live for life. Errors come from script (one per call, in
// order; nil for success) and then from fail.
type idp struct {
	clock *clock
	life  time.Duration
	delay atomic.Int64 // each call sleeps this long

	mu       sync.Mutex
	calls    []fetchCall
	script   []error
	fail     error
	issued   map[string]time.Time // access token → expiry
	n        int
	inFlight int
}

type fetchCall struct {
	at   time.Time
	prev *upstream.Tokens
	err  error
}

func newIdP(c *clock, life time.Duration) *idp {
	return &idp{clock: c, life: life, issued: map[string]time.Time{}}
}

func (p *idp) fetch(ctx context.Context, prev *upstream.Tokens) (*upstream.Tokens, error) {
	p.mu.Lock()
	p.inFlight++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inFlight--
		p.mu.Unlock()
	}()
	if d := time.Duration(p.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", upstream.ErrUnavailable, ctx.Err())
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var cp *upstream.Tokens
	if prev != nil {
		v := *prev
		cp = &v
	}
	err := p.fail
	if len(p.script) > 0 {
		err, p.script = p.script[0], p.script[1:]
	}
	p.calls = append(p.calls, fetchCall{at: time.Now(), prev: cp, err: err})
	if err != nil {
		return nil, err
	}
	p.n++
	t := &upstream.Tokens{
		AccessToken:  fmt.Sprintf("AT.%d.secret", p.n),
		AccessExpiry: p.clock.now().Add(p.life),
		RefreshToken: fmt.Sprintf("RT.%d.secret", p.n),
		User:         upstream.User{ID: "svc-user"},
	}
	p.issued[t.AccessToken] = t.AccessExpiry
	return t, nil
}

func (p *idp) setFail(err error) {
	p.mu.Lock()
	p.fail = err
	p.mu.Unlock()
}

func (p *idp) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.calls)
}

func (p *idp) fetches() []fetchCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]fetchCall(nil), p.calls...)
}

func (p *idp) expiry(tok string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.issued[tok]
}

func (p *idp) fetching() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight > 0
}

var (
	errDown     = fmt.Errorf("%w: calling /oauth2/v1/token: connection refused", upstream.ErrUnavailable)
	errRejected = fmt.Errorf("%w: invalid_client (status 401 LOCAL_AUTH_FAILED)", upstream.ErrRejected)
)

// logs returns a debug logger whose entries are checked, when the test ends, for tokens, and
// shown when the test failed.
func logs(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, obs := observer.New(zapcore.DebugLevel)
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range obs.All() {
				t.Log(e.Time.Format("05.000"), e.Level, e.Message, e.ContextMap())
			}
		}
		for _, e := range obs.All() {
			if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, "secret") {
				t.Errorf("a token was logged: %s", line)
			}
		}
	})
	return zap.New(core), obs
}

func memStore(t *testing.T, c *clock) *sessions.MemoryStore {
	st, err := sessions.NewMemoryStore(sessions.Options{IdleTimeout: 24 * time.Hour, Lifetime: 48 * time.Hour, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newKeys(t *testing.T) *sessions.KeyRing {
	k := make([]byte, sessions.KeySize)
	rand.Read(k)
	kr, err := sessions.NewKeyRing(k)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// redisStore is one replica's store on srv: every replica uses the same prefix and keys.
func redisStore(t *testing.T, srv *redistest.Server, c *clock, keys *sessions.KeyRing) *sessions.RedisStore {
	st, err := sessions.NewRedisStore(
		sessions.RedisOptions{URL: "redis://" + srv.Addr, KeyPrefix: "svc:", OpTimeout: 250 * time.Millisecond},
		sessions.Options{IdleTimeout: 24 * time.Hour, Lifetime: 48 * time.Hour, Keys: keys, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// newSource returns a Source with test defaults (short backoffs) over o, closed when the test ends.
func newSource(t *testing.T, o Options) *Source {
	t.Helper()
	if o.ID == "" {
		o.ID = testID
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 50 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 200 * time.Millisecond
	}
	if o.Refresher.PollEvery == 0 {
		o.Refresher.PollEvery = 10 * time.Millisecond
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func mustToken(t *testing.T, s *Source) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return tok
}

// eventually polls cond every 5ms until it holds, failing after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

func TestNewValidates(t *testing.T) {
	c := &clock{}
	st := memStore(t, c)
	fetch := newIdP(c, time.Hour).fetch
	for name, o := range map[string]Options{
		"no store":         {ID: testID, Fetch: fetch},
		"no id":            {Store: st, Fetch: fetch},
		"id too long":      {Store: st, ID: strings.Repeat("x", 257), Fetch: fetch},
		"no fetch":         {Store: st, ID: testID},
		"negative window":  {Store: st, ID: testID, Fetch: fetch, RefreshBefore: -time.Second},
		"backoffs swapped": {Store: st, ID: testID, Fetch: fetch, MinBackoff: time.Minute, MaxBackoff: time.Second},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	s, err := New(Options{Store: st, ID: testID, Fetch: fetch})
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // never started: returns at once
	s.Start() // after Close: nothing
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Token(ctx); !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("Token of a closed Source: %v, want ErrUnavailable", err)
	}
}

// TestSharedAcrossReplicas: three replicas on one Redis, started together and serving
// concurrently for three token lifetimes, fetch each token once: one fetch at start, then one per
// refresh interval, never two close together; every Token call succeeds with an unexpired token.
func TestSharedAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	c := &clock{}
	keys := newKeys(t)
	const life, before = 1500 * time.Millisecond, 300 * time.Millisecond // refresh 1.2s after each fetch
	p := newIdP(c, life)
	log, _ := logs(t)
	var srcs []*Source
	for range 3 {
		srcs = append(srcs, newSource(t, Options{Store: redisStore(t, srv, c, keys), Fetch: p.fetch,
			Dialect: "oauth2", RefreshBefore: before, Now: c.now, Logger: log}))
	}
	for _, s := range srcs {
		go s.Start()
	}

	stop := time.Now().Add(3 * life)
	var wg sync.WaitGroup
	var served atomic.Int64
	errs := make(chan error, 100)
	for _, s := range srcs {
		for range 3 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					tok, err := s.Token(ctx)
					now := c.now()
					cancel()
					switch {
					case err != nil:
						errs <- err
						return
					case !p.expiry(tok).After(now):
						errs <- fmt.Errorf("Token served an expired token (expired %s ago)", now.Sub(p.expiry(tok)))
						return
					}
					served.Add(1)
					time.Sleep(time.Millisecond)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	calls := p.fetches()
	for i, f := range calls {
		if f.err != nil {
			t.Errorf("fetch %d failed: %v", i, f.err)
		}
		if i > 0 {
			if gap := f.at.Sub(calls[i-1].at); gap < life-before-200*time.Millisecond {
				t.Errorf("fetches %d and %d are %s apart: a token was fetched twice", i-1, i, gap)
			}
		}
	}
	// 4.5s of service, a refresh every 1.2s: fetches at 0, 1.2, 2.4, 3.6.
	if n := len(calls); n < 3 || n > 5 {
		t.Errorf("%d fetches for 3 token lifetimes and 3 replicas, want 4 (one per refresh interval)", n)
	}
	t.Logf("%d fetches, %d tokens served", len(calls), served.Load())
}

// TestProactiveRefreshNeverBlocks: the token is replaced before it expires, and while the refresh
// waits for a slow Identity, Token keeps returning the current token at once.
func TestProactiveRefreshNeverBlocks(t *testing.T) {
	c := &clock{}
	const life = 2 * time.Second
	p := newIdP(c, life)
	log, _ := logs(t)
	// window max(800ms, 200ms), within life/2: refresh 1.2s after the fetch, done 1.7s after.
	s := newSource(t, Options{Store: memStore(t, c), Fetch: p.fetch, RefreshBefore: 800 * time.Millisecond, Now: c.now, Logger: log})
	s.Start()
	first := mustToken(t, s)
	p.delay.Store(int64(500 * time.Millisecond))

	var slowest time.Duration
	sawOldDuringFetch := false
	var second string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		fetching := p.fetching()
		start := time.Now()
		tok, err := s.Token(context.Background())
		took := time.Since(start)
		if err != nil {
			t.Fatalf("Token during refresh: %v", err)
		}
		slowest = max(slowest, took)
		if fetching && tok == first {
			sawOldDuringFetch = true
		}
		if tok != first {
			second = tok
			if !c.now().Before(p.expiry(first)) {
				t.Fatalf("the token was replaced only after it expired")
			}
			break
		}
	}
	if second == "" {
		t.Fatal("the token was not replaced before it expired")
	}
	if !sawOldDuringFetch {
		t.Error("Token never served the current token while the refresh was fetching")
	}
	if slowest > 20*time.Millisecond {
		t.Errorf("a Token call took %s while a refresh was in flight", slowest)
	}
	if n := p.count(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

func TestTokenDoesNotAllocate(t *testing.T) {
	c := &clock{}
	s := newSource(t, Options{Store: memStore(t, c), Fetch: newIdP(c, time.Hour).fetch, Now: c.now})
	s.Start()
	mustToken(t, s)
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() { _, _ = s.Token(ctx) }); n != 0 {
		t.Fatalf("Token allocates %v times per call", n)
	}
}

// TestColdStart: Token waits for the first fetch, as long as its ctx allows, including before
// Start; a failed first fetch answers at once with ErrUnavailable and a Retry-After.
func TestColdStart(t *testing.T) {
	c := &clock{}
	p := newIdP(c, time.Hour)
	gate := make(chan struct{})
	fetch := func(ctx context.Context, prev *upstream.Tokens) (*upstream.Tokens, error) {
		<-gate
		return p.fetch(ctx, prev)
	}
	s := newSource(t, Options{Store: memStore(t, c), Fetch: fetch, Now: c.now})

	got := make(chan string, 1)
	go func() {
		tok, err := s.Token(context.Background())
		if err != nil {
			t.Errorf("waiting Token: %v", err)
		}
		got <- tok
	}()
	s.Start()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Token(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("Token with a short ctx: %v, want DeadlineExceeded and ErrUnavailable", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Token ignored its ctx: returned after %s", took)
	}
	if RetryAfter(err) < time.Second {
		t.Errorf("RetryAfter = %s, want at least 1s", RetryAfter(err))
	}
	select {
	case tok := <-got:
		t.Fatalf("Token returned %q before the first fetch", tok)
	default:
	}
	close(gate)
	select {
	case tok := <-got:
		if tok != "AT.1.secret" {
			t.Fatalf("Token = %q", tok)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Token did not return after the first fetch")
	}

	// A first fetch that fails: Token answers as soon as the attempt is over.
	p2 := newIdP(c, time.Hour)
	p2.setFail(errDown)
	s2 := newSource(t, Options{Store: memStore(t, c), Fetch: p2.fetch, MinBackoff: 2 * time.Second, MaxBackoff: 4 * time.Second, Now: c.now})
	s2.Start()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	_, err = s2.Token(ctx2)
	if !errors.Is(err, upstream.ErrUnavailable) || ctx2.Err() != nil {
		t.Fatalf("Token after a failed first fetch: %v, want ErrUnavailable at once", err)
	}
	if ra := RetryAfter(err); ra < time.Second || ra > 4*time.Second {
		t.Fatalf("RetryAfter = %s, want the backoff (1s..4s)", ra)
	}
}

// TestOutage: while Identity is down the current token is served until it expires, then Token
// fails with ErrUnavailable and a Retry-After; retries back off; service resumes when Identity
// answers again.
func TestOutage(t *testing.T) {
	c := &clock{}
	const life = 1500 * time.Millisecond
	p := newIdP(c, life)
	log, _ := logs(t)
	s := newSource(t, Options{Store: memStore(t, c), Fetch: p.fetch, RefreshBefore: 500 * time.Millisecond, // refresh at 1s
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, Now: c.now, Logger: log})
	s.Start()
	first := mustToken(t, s)
	p.setFail(errDown)

	var err error
	for {
		var tok string
		tok, err = s.Token(context.Background())
		if err != nil {
			break
		}
		if tok != first {
			t.Fatalf("Token = %q, want the current token %q", tok, first)
		}
		time.Sleep(time.Millisecond)
	}
	if now := c.now(); now.Before(p.expiry(first)) {
		t.Fatalf("Token failed %s before the token expired: %v", p.expiry(first).Sub(now), err)
	}
	if !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("Token after expiry: %v, want ErrUnavailable", err)
	}
	if ra := RetryAfter(err); ra < time.Second {
		t.Fatalf("RetryAfter = %s, want at least 1s", ra)
	}

	time.Sleep(time.Second) // 1.5s of failures in all
	calls := p.fetches()[1:]
	// Backoff 100ms, then 100-200ms, then 200-400ms: at most 9 attempts in 1.5s.
	if len(calls) < 3 || len(calls) > 10 {
		t.Errorf("%d attempts in 1.5s of outage, want 3..10", len(calls))
	}
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < 90*time.Millisecond {
			t.Errorf("attempts %d and %d only %s apart", i-1, i, gap)
		}
	}

	p.setFail(nil)
	eventually(t, 2*time.Second, "a token after Identity recovered", func() bool {
		tok, err := s.Token(context.Background())
		return err == nil && tok != first
	})
}

// TestRejectedFetchAndPrev: Fetch is given the current tokens; a rejected fetch is logged at
// error level with its reason, backs off, and the next fetch is given the same tokens again.
func TestRejectedFetchAndPrev(t *testing.T) {
	c := &clock{}
	p := newIdP(c, time.Second)
	p.script = []error{nil, errRejected, nil, nil}
	log, obs := logs(t)
	s := newSource(t, Options{Store: memStore(t, c), Fetch: p.fetch, RefreshBefore: 300 * time.Millisecond, Now: c.now, Logger: log})
	s.Start()
	eventually(t, 5*time.Second, "four fetches", func() bool { return p.count() >= 4 })

	calls := p.fetches()
	want := func(i int, access string) {
		t.Helper()
		prev := calls[i].prev
		if access == "" {
			if prev != nil {
				t.Errorf("fetch %d: prev = %+v, want nil", i, prev)
			}
			return
		}
		if prev == nil || prev.AccessToken != access || prev.RefreshToken != "RT"+access[2:] || prev.User.ID != "svc-user" {
			t.Errorf("fetch %d: prev = %+v, want the tokens of %s", i, prev, access)
		}
	}
	want(0, "")
	want(1, "AT.1.secret")
	want(2, "AT.1.secret") // the rejected fetch changed nothing
	want(3, "AT.2.secret")
	if gap := calls[2].at.Sub(calls[1].at); gap < 45*time.Millisecond {
		t.Errorf("retried %s after a rejected fetch, want a backoff", gap)
	}

	rejected := obs.FilterLevelExact(zapcore.ErrorLevel).All()
	if len(rejected) != 1 || !strings.Contains(fmt.Sprint(rejected[0].ContextMap()), "LOCAL_AUTH_FAILED") {
		t.Errorf("error logs = %v, want one naming the reason", rejected)
	}
}

// TestInvalidate: concurrent Invalidate calls with the same rejected token make one fetch, with
// or without the store; a token already replaced is returned without a fetch; a token fetched
// less than 10s ago is not refetched.
func TestInvalidate(t *testing.T) {
	c := &clock{}
	p := newIdP(c, time.Hour)
	log, _ := logs(t)
	st := memStore(t, c)
	s := newSource(t, Options{Store: st, Fetch: p.fetch, Now: c.now, Logger: log})
	s.Start()
	t1 := mustToken(t, s)
	ctx := context.Background()

	if _, err := s.Invalidate(ctx, t1); !errors.Is(err, ErrTooSoon) {
		t.Fatalf("Invalidate of a token fetched just now: %v, want ErrTooSoon", err)
	}
	c.advance(11 * time.Second)
	p.delay.Store(int64(100 * time.Millisecond))
	var wg sync.WaitGroup
	results := make(chan string, 20)
	for range 20 {
		wg.Go(func() {
			tok, err := s.Invalidate(ctx, t1)
			if err != nil {
				t.Errorf("Invalidate: %v", err)
			}
			results <- tok
		})
	}
	wg.Wait()
	close(results)
	for tok := range results {
		if tok != "AT.2.secret" {
			t.Errorf("Invalidate returned %q, want the new token", tok)
		}
	}
	if n := p.count(); n != 2 {
		t.Fatalf("%d fetches after 20 concurrent Invalidate calls, want 2", n)
	}

	if tok, err := s.Invalidate(ctx, t1); err != nil || tok != "AT.2.secret" {
		t.Fatalf("Invalidate of a replaced token = %q, %v; want the current token", tok, err)
	}
	if _, err := s.Invalidate(ctx, "AT.2.secret"); !errors.Is(err, ErrTooSoon) {
		t.Fatalf("second Invalidate within 10s: %v, want ErrTooSoon", err)
	}
	if n := p.count(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	c.advance(11 * time.Second)
	if tok, err := s.Invalidate(ctx, "AT.2.secret"); err != nil || tok != "AT.3.secret" {
		t.Fatalf("Invalidate 10s later = %q, %v; want a new token", tok, err)
	}

	// With the store down, the fetch is made without it, still once.
	st.Close()
	c.advance(11 * time.Second)
	for range 10 {
		wg.Go(func() {
			if tok, err := s.Invalidate(ctx, "AT.3.secret"); err != nil || tok != "AT.4.secret" {
				t.Errorf("Invalidate without a store = %q, %v; want a new token", tok, err)
			}
		})
	}
	wg.Wait()
	if n := p.count(); n != 4 {
		t.Fatalf("%d fetches, want 4", n)
	}
}

// TestInvalidateAcrossReplicas: a replica adopts the stored token without fetching, and two
// replicas that both see their token rejected make one fetch between them.
func TestInvalidateAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	c := &clock{}
	keys := newKeys(t)
	p := newIdP(c, time.Hour)
	log, _ := logs(t)
	a := newSource(t, Options{Store: redisStore(t, srv, c, keys), Fetch: p.fetch, Now: c.now, Logger: log})
	b := newSource(t, Options{Store: redisStore(t, srv, c, keys), Fetch: p.fetch, Now: c.now, Logger: log})
	a.Start()
	t1 := mustToken(t, a)
	b.Start()
	if tok := mustToken(t, b); tok != t1 || p.count() != 1 {
		t.Fatalf("replica b serves %q after %d fetches, want a's token after 1", tok, p.count())
	}

	c.advance(11 * time.Second)
	p.delay.Store(int64(200 * time.Millisecond))
	var wg sync.WaitGroup
	toks := make([]string, 2)
	for i, s := range []*Source{a, b} {
		wg.Go(func() {
			tok, err := s.Invalidate(context.Background(), t1)
			if err != nil {
				t.Errorf("Invalidate on replica %d: %v", i, err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	if toks[0] != "AT.2.secret" || toks[1] != "AT.2.secret" {
		t.Fatalf("Invalidate returned %q, want the one new token", toks)
	}
	if n := p.count(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

// TestRedisDown: with Redis stopped, or paused, every replica keeps serving and refreshes its
// token by itself; once Redis is back they share one token again.
func TestRedisDown(t *testing.T) {
	for _, mode := range []string{"stopped", "paused"} {
		t.Run(mode, func(t *testing.T) {
			srv := redistest.Start(t)
			c := &clock{}
			keys := newKeys(t)
			const life, before = 2 * time.Second, 800 * time.Millisecond // refresh 1.2s after each fetch
			p := newIdP(c, life)
			log, _ := logs(t)
			var srcs []*Source
			for range 2 {
				o := Options{Store: redisStore(t, srv, c, keys), Fetch: p.fetch, RefreshBefore: before, Now: c.now, Logger: log}
				// A refresh gives up on the store well within the 800ms refresh window.
				o.Refresher = sessions.RefresherOptions{Timeout: 500 * time.Millisecond, LockTTL: time.Second}
				s := newSource(t, o)
				s.Start()
				srcs = append(srcs, s)
			}
			mustToken(t, srcs[0])
			eventually(t, time.Second, "both replicas sharing the first token", func() bool {
				return mustToken(t, srcs[0]) == mustToken(t, srcs[1])
			})

			// serve asserts that both replicas serve unexpired tokens for d, and returns how many
			// tokens each served.
			serve := func(d time.Duration) []int {
				seen := []map[string]bool{{}, {}}
				for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
					for i, s := range srcs {
						tok, err := s.Token(context.Background())
						if err != nil {
							t.Fatalf("replica %d: Token: %v", i, err)
						}
						if now := c.now(); !p.expiry(tok).After(now) {
							t.Fatalf("replica %d served an expired token", i)
						}
						seen[i][tok] = true
					}
				}
				return []int{len(seen[0]), len(seen[1])}
			}

			if mode == "stopped" {
				srv.Stop()
			} else {
				srv.Pause()
			}
			mark := p.count()
			if n := serve(2500 * time.Millisecond); n[0] < 2 || n[1] < 2 {
				t.Errorf("replicas served %v tokens in 2.5s without Redis, want each to refresh its own", n)
			}
			if n := p.count() - mark; n < 2 {
				t.Errorf("%d fetches in 2.5s without Redis, want at least one per replica", n)
			}

			if mode == "stopped" {
				srv.Restart() // empty: the record is created again
			} else {
				srv.Resume()
			}
			eventually(t, 5*time.Second, "both replicas sharing a token", func() bool {
				return mustToken(t, srcs[0]) == mustToken(t, srcs[1])
			})
			mark = p.count()
			serve(2500 * time.Millisecond)
			calls := p.fetches()[mark:]
			if len(calls) < 1 || len(calls) > 3 {
				t.Errorf("%d fetches in 2.5s after Redis came back, want 2 or 3 (shared)", len(calls))
			}
			for i := 1; i < len(calls); i++ {
				if gap := calls[i].at.Sub(calls[i-1].at); gap < time.Second {
					t.Errorf("fetches %s apart after Redis came back: not shared", gap)
				}
			}
		})
	}
}

// TestUnreadableRecordReplaced: a stored record sealed under keys this replica does not hold is
// replaced with a new fetch rather than failing.
func TestUnreadableRecordReplaced(t *testing.T) {
	srv := redistest.Start(t)
	c := &clock{}
	p := newIdP(c, time.Hour)
	old := newSource(t, Options{Store: redisStore(t, srv, c, newKeys(t)), Fetch: p.fetch, Now: c.now})
	old.Start()
	mustToken(t, old)
	old.Close()

	st := redisStore(t, srv, c, newKeys(t))
	s := newSource(t, Options{Store: st, Fetch: p.fetch, Now: c.now})
	s.Start()
	if tok := mustToken(t, s); tok != "AT.2.secret" {
		t.Fatalf("Token = %q, want a new token", tok)
	}
	if rec, err := st.Load(context.Background(), testID); err != nil || rec.AccessToken != "AT.2.secret" {
		t.Fatalf("stored record: %v", err)
	}
}

type recorder struct {
	mu      sync.Mutex
	results []string
	ages    []time.Duration
}

func (r *recorder) Fetched(result string) {
	r.mu.Lock()
	r.results = append(r.results, result)
	r.mu.Unlock()
}

func (r *recorder) Replaced(age time.Duration) {
	r.mu.Lock()
	r.ages = append(r.ages, age)
	r.mu.Unlock()
}

// TestObserver: one result per fetch, and the age of each replaced token.
func TestObserver(t *testing.T) {
	c := &clock{}
	p := newIdP(c, time.Second)
	p.script = []error{nil, errDown, errRejected, nil}
	rec := &recorder{}
	s := newSource(t, Options{Store: memStore(t, c), Fetch: p.fetch, RefreshBefore: 400 * time.Millisecond, // refresh at 0.6s
		Observer: rec, Now: c.now})
	s.Start()
	eventually(t, 5*time.Second, "four fetches", func() bool { return p.count() >= 4 })
	s.Close()

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if got := strings.Join(rec.results[:4], ","); got != "ok,unavailable,rejected,ok" {
		t.Errorf("results = %s", got)
	}
	// The first token was replaced after the refresh window (0.6s) and two backoffs (50-200ms).
	if len(rec.ages) != 1 || rec.ages[0] < 600*time.Millisecond || rec.ages[0] > time.Second {
		t.Errorf("ages = %v, want one of 0.6s..1s", rec.ages)
	}
}
