package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sitegate/sitegate/upstream"
	"github.com/sitegate/sitegate/upstream/emulator"
)

// idp is a fabric Identity emulator with a v1 client signed in as one user.
type idp struct {
	url string
	v1  *upstream.FabricV1
}

func newIdP(t *testing.T) *idp {
	t.Helper()
	const apiKey, account = "test-api-key", "5f689caa4216e7000750d1ef"
	e, err := emulator.New(emulator.Config{APIKey: apiKey,
		Users: []emulator.User{{Username: "pat", Password: "pat-password", Account: account}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	v1, err := upstream.NewFabricV1(upstream.Options{BaseURL: srv.URL, APIKey: apiKey,
		SiteContext: `{"account":"` + account + `"}`, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return &idp{url: srv.URL, v1: v1}
}

// fault adds an emulator fault, e.g. {"endpoint":"v1.refresh","latency":"200ms"}.
func (p *idp) fault(t *testing.T, js string) {
	t.Helper()
	res, err := http.Post(p.url+emulator.ControlPrefix+"faults", "application/json", bytes.NewBufferString(js))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		t.Fatalf("adding fault %s: %s", js, res.Status)
	}
}

func (p *idp) calls(t *testing.T) emulator.Calls {
	t.Helper()
	res, err := http.Get(p.url + emulator.ControlPrefix + "calls")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var c emulator.Calls
	if err := json.NewDecoder(res.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// session signs in and stores the session.
func (p *idp) session(t *testing.T, st Store) *Session {
	t.Helper()
	tok, err := p.v1.Login(context.Background(), "pat", "pat-password")
	if err != nil {
		t.Fatal(err)
	}
	s := &Session{UserID: tok.User.ID, Account: tok.User.Account, Dialect: "fabric_v1",
		AccessToken: tok.AccessToken, AccessExpiry: tok.AccessExpiry,
		RefreshToken: tok.RefreshToken, RefreshExpiry: tok.RefreshExpiry}
	if err := st.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// refresh is the RefreshFunc of a gateway: redeem the refresh token, apply the new tokens.
func (p *idp) refresh(ctx context.Context, cur *Session) (*Session, error) {
	tok, err := p.v1.Refresh(ctx, &upstream.Tokens{RefreshToken: cur.RefreshToken})
	if err != nil {
		return nil, err
	}
	cur.AccessToken, cur.AccessExpiry = tok.AccessToken, tok.AccessExpiry
	if tok.RefreshToken != "" {
		cur.RefreshToken, cur.RefreshExpiry = tok.RefreshToken, tok.RefreshExpiry
	}
	return cur, nil
}

func newRefresher(t *testing.T, st LockingStore, o RefresherOptions) *Refresher {
	t.Helper()
	r, err := NewRefresher(st, o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type result struct {
	s   *Session
	out Outcome
	err error
}

// storm calls Refresh from n goroutines per refresher at once, all with a copy of s.
func storm(rs []*Refresher, n int, s *Session, fn RefreshFunc) []result {
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		res   = make([]result, len(rs)*n)
	)
	for i := range res {
		wg.Go(func() {
			<-start
			got, out, err := rs[i%len(rs)].Refresh(context.Background(), copySession(s), fn)
			res[i] = result{got, out, err}
		})
	}
	close(start)
	wg.Wait()
	return res
}

// checkExactlyOnce asserts that the storm refreshed once at the emulator, that every caller got
// the new tokens, and that the store holds them.
func checkExactlyOnce(t *testing.T, p *idp, st Store, s *Session, res []result) {
	t.Helper()
	c := p.calls(t)
	if n := c.Calls["v1.refresh"]; n != 1 {
		t.Errorf("v1.refresh called %d times, want 1", n)
	}
	if c.RefreshTokenReuse != 0 {
		t.Errorf("refresh_token_reuse = %d, want 0", c.RefreshTokenReuse)
	}
	stored, err := st.Load(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Version != s.Version+1 || stored.RefreshToken == s.RefreshToken || stored.AccessToken == s.AccessToken {
		t.Errorf("stored session not refreshed once: version %d (was %d), tokens rotated: %t, %t", stored.Version,
			s.Version, stored.RefreshToken != s.RefreshToken, stored.AccessToken != s.AccessToken)
	}
	refreshed := 0
	for i, r := range res {
		switch {
		case r.err != nil:
			t.Errorf("caller %d: %v", i, r.err)
			continue
		case r.s.AccessToken != stored.AccessToken || r.s.RefreshToken != stored.RefreshToken:
			t.Errorf("caller %d (%s) did not get the stored tokens", i, r.out)
		case r.s.Version != stored.Version:
			t.Errorf("caller %d (%s) got version %d, want %d", i, r.out, r.s.Version, stored.Version)
		}
		if r.out == Refreshed {
			refreshed++
		}
	}
	if refreshed != 1 {
		t.Errorf("%d callers report %q, want 1", refreshed, Refreshed)
	}
}

// TestRefreshRedisReplicas: two instances (two RedisStores on one Redis), 32 callers each,
// refresh against the emulator with a slow token endpoint: one redeem, everyone gets its result.
func TestRefreshRedisReplicas(t *testing.T) {
	f := newRedisFixture(t)
	keys := mustRing(t, testKey(1))
	a, b := f.open(t, "rr:", Options{Keys: keys}), f.open(t, "rr:", Options{Keys: keys})
	defer a.Close()
	defer b.Close()
	p := newIdP(t)
	s := p.session(t, a)
	p.fault(t, `{"endpoint":"v1.refresh","latency":"200ms"}`)

	rs := []*Refresher{newRefresher(t, a, RefresherOptions{}), newRefresher(t, b, RefresherOptions{})}
	res := storm(rs, 32, s, p.refresh)
	checkExactlyOnce(t, p, b, s, res)
	if _, err := b.TryLock(context.Background(), s.ID, time.Second); err != nil {
		t.Errorf("lock not released: %v", err)
	}
}

// TestRefreshMemory: in one process, single-flight alone makes the refresh happen once.
func TestRefreshMemory(t *testing.T) {
	st, err := NewMemoryStore(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p := newIdP(t)
	s := p.session(t, st)
	p.fault(t, `{"endpoint":"v1.refresh","latency":"200ms"}`)

	cs := &countingStore{LockingStore: st}
	res := storm([]*Refresher{newRefresher(t, cs, RefresherOptions{})}, 64, s, p.refresh)
	checkExactlyOnce(t, p, st, s, res)
	if n := cs.locks.Load(); n != 1 {
		t.Errorf("TryLock called %d times, want 1: callers did not share one flight", n)
	}

	// A caller still holding the old version gets the stored session without a redeem.
	got, out, err := newRefresher(t, st, RefresherOptions{}).Refresh(context.Background(), s, p.refresh)
	if err != nil || out != Coalesced || got.Version != s.Version+1 {
		t.Fatalf("stale caller: version %v, %q, %v; want version %d, coalesced", got, out, err, s.Version+1)
	}
	if n := p.calls(t).Calls["v1.refresh"]; n != 1 {
		t.Fatalf("stale caller redeemed again: %d calls", n)
	}
}

// countingStore counts TryLock calls.
type countingStore struct {
	LockingStore
	locks atomic.Int32
}

func (c *countingStore) TryLock(ctx context.Context, id string, ttl time.Duration) (Lease, error) {
	c.locks.Add(1)
	return c.LockingStore.TryLock(ctx, id, ttl)
}

// TestRefreshCallerCancel: the caller that started the flight gives up; the refresh completes
// once for the others.
func TestRefreshCallerCancel(t *testing.T) {
	st, err := NewMemoryStore(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	s := &Session{AccessToken: "old"}
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	started := make(chan struct{})
	fn := func(ctx context.Context, cur *Session) (*Session, error) {
		if calls.Add(1) == 1 {
			close(started)
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		cur.AccessToken = "new"
		return cur, nil
	}
	r := newRefresher(t, st, RefresherOptions{})

	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, _, err := r.Refresh(cctx, copySession(s), fn)
		first <- err
	}()
	<-started
	res := make(chan result, 4)
	for range cap(res) {
		go func() {
			got, out, err := r.Refresh(ctx, copySession(s), fn)
			res <- result{got, out, err}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them join the flight
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v, want context.Canceled", err)
	}
	for range cap(res) {
		if r := <-res; r.err != nil || r.s.AccessToken != "new" || r.out != Coalesced {
			t.Errorf("other caller: %q, %v", r.out, r.err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("fn called %d times, want 1", n)
	}
	if got, _ := st.Load(ctx, s.ID); got == nil || got.AccessToken != "new" {
		t.Fatal("refreshed session not stored")
	}
}

// counted returns a RefreshFunc that counts its calls, sleeps d, and sets a new access token.
func counted(calls *atomic.Int32, d time.Duration) RefreshFunc {
	return func(ctx context.Context, cur *Session) (*Session, error) {
		calls.Add(1)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		cur.AccessToken = "new"
		return cur, nil
	}
}

// TestRefreshAbandonedLock: a lock whose holder never releases it blocks a refresh only until
// its lease ends; then the waiter takes it over and refreshes.
func TestRefreshAbandonedLock(t *testing.T) {
	const ttl = 300 * time.Millisecond
	lockStores(t, func(t *testing.T, open func(t *testing.T, n int) []LockingStore) {
		ctx := context.Background()
		st := open(t, 2)
		s := &Session{AccessToken: "old"}
		if err := st[0].Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		if _, err := st[0].TryLock(ctx, s.ID, ttl); err != nil { // a crashed instance
			t.Fatal(err)
		}
		var calls atomic.Int32
		r := newRefresher(t, st[1], RefresherOptions{LockTTL: ttl, Timeout: 5 * time.Second})
		start := time.Now()
		got, out, err := r.Refresh(ctx, s, counted(&calls, 0))
		if err != nil || out != Refreshed || got.AccessToken != "new" {
			t.Fatalf("Refresh: %q, %v", out, err)
		}
		if d := time.Since(start); d < ttl-50*time.Millisecond || d > 3*ttl {
			t.Errorf("took over after %v, want about %v", d, ttl)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("fn called %d times, want 1", n)
		}
	})
}

// TestRefreshRenewsLease: a refresh function running for twice LockTTL keeps the lock, so the
// other instance waits for its result instead of redeeming the same refresh token.
func TestRefreshRenewsLease(t *testing.T) {
	const ttl = 300 * time.Millisecond
	lockStores(t, func(t *testing.T, open func(t *testing.T, n int) []LockingStore) {
		ctx := context.Background()
		st := open(t, 2)
		s := &Session{AccessToken: "old"}
		if err := st[0].Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		fn := counted(&calls, 2*ttl)
		o := RefresherOptions{LockTTL: ttl, Timeout: 5 * time.Second}
		slow, waiter := newRefresher(t, st[0], o), newRefresher(t, st[1], o) // two instances

		done := make(chan result, 1)
		go func() {
			got, out, err := slow.Refresh(ctx, copySession(s), fn)
			done <- result{got, out, err}
		}()
		for calls.Load() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		got, out, err := waiter.Refresh(ctx, copySession(s), fn)
		if err != nil || out != Coalesced || got.AccessToken != "new" {
			t.Errorf("waiter: %q, %v; want coalesced", out, err)
		}
		if r := <-done; r.err != nil || r.out != Refreshed {
			t.Errorf("holder: %q, %v; want refreshed", r.out, r.err)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("fn called %d times, want 1", n)
		}
	})
}

// TestRefreshError: fn's error reaches every caller of the flight as is; the session is left
// as it was and the lock is released.
func TestRefreshError(t *testing.T) {
	lockStores(t, func(t *testing.T, open func(t *testing.T, n int) []LockingStore) {
		ctx := context.Background()
		st := open(t, 1)[0]
		s := &Session{AccessToken: "old", RefreshToken: "rt"}
		if err := st.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		fn := func(ctx context.Context, cur *Session) (*Session, error) {
			calls.Add(1)
			time.Sleep(100 * time.Millisecond)
			cur.AccessToken = "half-done"
			return nil, upstream.ErrRejected
		}
		res := storm([]*Refresher{newRefresher(t, st, RefresherOptions{})}, 16, s, fn)
		for i, r := range res {
			if !errors.Is(r.err, upstream.ErrRejected) || r.s != nil {
				t.Errorf("caller %d: %v, want upstream.ErrRejected", i, r.err)
			}
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("fn called %d times, want 1", n)
		}
		got, err := st.Load(ctx, s.ID)
		if err != nil || got.Version != s.Version || got.AccessToken != "old" {
			t.Errorf("stored session changed: %v", err)
		}
		if _, err := st.TryLock(ctx, s.ID, time.Second); err != nil {
			t.Errorf("lock not released: %v", err)
		}
	})
}

// TestRefreshRedisDown: with Redis down, Refresh fails with ErrUnavailable without calling fn;
// Redis stopping during fn fails the save with ErrUnavailable; after a restart it works again.
func TestRefreshRedisDown(t *testing.T) {
	f, st, r, s := redisRefresh(t, 3*time.Second)
	ctx := context.Background()
	var calls atomic.Int32

	f.srv.Stop()
	if _, _, err := r.Refresh(ctx, copySession(s), counted(&calls, 0)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Refresh with Redis down: %v, want ErrUnavailable", err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("fn called %d times with Redis down", n)
	}

	f.srv.Restart() // empty: redistest keeps no data
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	stopping := func(ctx context.Context, cur *Session) (*Session, error) {
		f.srv.Stop()
		return counted(&calls, 0)(ctx, cur)
	}
	unsaved, _, err := r.Refresh(ctx, copySession(s), stopping)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Refresh with Redis stopping during fn: %v, want ErrUnavailable", err)
	}
	if unsaved == nil || unsaved.AccessToken != "new" {
		t.Fatalf("the tokens Identity issued were dropped with the failed save: %+v", unsaved)
	}

	f.srv.Restart()
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	got, out, err := r.Refresh(ctx, copySession(s), counted(&calls, 0))
	if err != nil || out != Refreshed || got.AccessToken != "new" {
		t.Fatalf("Refresh after restart: %q, %v", out, err)
	}
}

// TestRefreshSaveOutlivesOutage: the store is unreachable for a while right after Identity
// rotated the tokens; the save is retried within the refresh's time, so nothing is lost.
func TestRefreshSaveOutlivesOutage(t *testing.T) {
	f, st, r, s := redisRefresh(t, 10*time.Second)
	ctx := context.Background()
	var calls atomic.Int32
	pausing := func(ctx context.Context, cur *Session) (*Session, error) {
		f.srv.Pause() // longer than the store's 1s operation timeout
		time.AfterFunc(2500*time.Millisecond, f.srv.Resume)
		return counted(&calls, 0)(ctx, cur)
	}
	got, _, err := r.Refresh(ctx, copySession(s), pausing)
	if err != nil || got.AccessToken != "new" {
		t.Fatalf("Refresh across an outage of the store: %v", err)
	}
	stored, err := st.Load(ctx, s.ID)
	if err != nil || stored.AccessToken != "new" || stored.Version != s.Version+1 || calls.Load() != 1 {
		t.Fatalf("stored after the outage: %+v, %v, %d calls", stored, err, calls.Load())
	}
}

// redisRefresh returns a Redis fixture, a store on it holding a new session, and a Refresher with
// timeout over that store.
func redisRefresh(t *testing.T, timeout time.Duration) (*redisFixture, *RedisStore, *Refresher, *Session) {
	t.Helper()
	f := newRedisFixture(t)
	st := f.open(t, "", Options{Keys: mustRing(t, testKey(1))})
	t.Cleanup(func() { st.Close() })
	s := &Session{AccessToken: "old"}
	if err := st.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return f, st, newRefresher(t, st, RefresherOptions{Timeout: timeout}), s
}
