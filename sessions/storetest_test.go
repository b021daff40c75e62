package sessions

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness adapts one Store implementation to the conformance suite.
type harness struct {
	// open returns a new, empty store with these options; the test closes it.
	open func(t *testing.T, o Options) Store
	// ttl returns the remaining time to live of the stored record of id, or a negative
	// duration when none is stored.
	ttl func(t *testing.T, st Store, id string) time.Duration
	// dump returns every key and value the store holds.
	dump func(t *testing.T, st Store) map[string][]byte
	// ttlSlack is how far below the expected value a ttl may read (time passing for real).
	ttlSlack time.Duration
}

// testStore is the conformance suite every Store passes.
func testStore(t *testing.T, h harness) {
	ctx := context.Background()
	setup := func(t *testing.T) (Store, *clock) {
		t.Helper()
		clk := &clock{t: t0}
		st := h.open(t, Options{Keys: mustRing(t, testKey(1)), Now: clk.Now})
		t.Cleanup(func() { st.Close() })
		return st, clk
	}
	create := func(t *testing.T, st Store) *Session {
		t.Helper()
		s := &Session{UserID: "u-1", Account: "acct", Dialect: "fabric_v1", Name: "Ada",
			Roles: []string{"admin"}, AccessToken: "AT-secret-value", AccessExpiry: t0.Add(time.Hour),
			RefreshToken: "RT-secret-value", RefreshExpiry: t0.Add(24 * time.Hour),
			Claims: map[string]string{"email": "ada@example.com"}}
		if err := st.Create(ctx, s); err != nil {
			t.Fatalf("Create: %v", err)
		}
		return s
	}
	load := func(t *testing.T, st Store, id string) *Session {
		t.Helper()
		s, err := st.Load(ctx, id)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		return s
	}
	notFound := func(t *testing.T, st Store, id string) {
		t.Helper()
		if s, err := st.Load(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Load = %v, %v; want ErrNotFound", s, err)
		}
	}
	checkTTL := func(t *testing.T, st Store, id string, want time.Duration) {
		t.Helper()
		if got := h.ttl(t, st, id); got > want || got < want-h.ttlSlack {
			t.Fatalf("stored ttl = %v, want %v (-%v)", got, want, h.ttlSlack)
		}
	}

	t.Run("CreateLoad", func(t *testing.T) {
		st, _ := setup(t)
		s := create(t, st)
		if len(s.ID) != 43 || s.Version != 1 || !s.Created.Equal(t0) || !s.LastSeen.Equal(t0) ||
			!s.Deadline.Equal(t0.Add(DefaultLifetime)) {
			t.Fatalf("Create set %+v", s)
		}
		if got := load(t, st, s.ID); !reflect.DeepEqual(got, s) {
			t.Fatalf("Load:\n got %+v\nwant %+v", got, s)
		}
		dup := &Session{ID: s.ID}
		if err := st.Create(ctx, dup); !errors.Is(err, ErrConflict) {
			t.Fatalf("Create with a taken id: %v, want ErrConflict", err)
		}
		notFound(t, st, "no-such-session")
		notFound(t, st, "")
		notFound(t, st, strings.Repeat("x", 1000))

		capped := &Session{Deadline: t0.Add(48 * time.Hour)}
		if err := st.Create(ctx, capped); err != nil || !capped.Deadline.Equal(t0.Add(DefaultLifetime)) {
			t.Fatalf("Create with a far deadline: %v, deadline %v", err, capped.Deadline)
		}
	})

	t.Run("SaveCompareAndSet", func(t *testing.T) {
		st, _ := setup(t)
		s := create(t, st)
		stale := load(t, st, s.ID)

		s.AccessToken, s.RefreshToken = "AT-2", "RT-2"
		if err := st.Save(ctx, s, 1); err != nil {
			t.Fatalf("Save: %v", err)
		}
		if s.Version != 2 {
			t.Fatalf("Version after Save = %d, want 2", s.Version)
		}
		if got := load(t, st, s.ID); got.Version != 2 || got.AccessToken != "AT-2" || got.RefreshToken != "RT-2" {
			t.Fatalf("Load after Save: %+v", got)
		}
		stale.AccessToken = "AT-stale"
		if err := st.Save(ctx, stale, stale.Version); !errors.Is(err, ErrConflict) {
			t.Fatalf("Save with a stale version: %v, want ErrConflict", err)
		}
		if stale.Version != 1 {
			t.Fatalf("failed Save changed Version to %d", stale.Version)
		}
		if got := load(t, st, s.ID); got.AccessToken != "AT-2" {
			t.Fatalf("stale Save wrote: %+v", got)
		}
		if err := st.Delete(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		if err := st.Save(ctx, s, s.Version); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Save of a deleted session: %v, want ErrNotFound", err)
		}
	})

	t.Run("ConcurrentSave", func(t *testing.T) {
		st, _ := setup(t)
		s := create(t, st)
		const n = 16
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				cp := *s
				cp.AccessToken = "AT-writer-" + string(rune('a'+i))
				errs[i] = st.Save(ctx, &cp, 1)
			})
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won < 0:
				won = i
			case err == nil:
				t.Fatalf("writers %d and %d both won", won, i)
			case !errors.Is(err, ErrConflict):
				t.Fatalf("writer %d: %v, want ErrConflict", i, err)
			}
		}
		if won < 0 {
			t.Fatal("no writer won")
		}
		got := load(t, st, s.ID)
		if got.Version != 2 || got.AccessToken != "AT-writer-"+string(rune('a'+won)) {
			t.Fatalf("stored %+v, want writer %d's", got, won)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		st, _ := setup(t)
		s := create(t, st)
		other := create(t, st)
		if err := st.Delete(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		notFound(t, st, s.ID)
		if h.ttl(t, st, s.ID) >= 0 {
			t.Fatal("deleted record still stored")
		}
		load(t, st, other.ID)
		if err := st.Delete(ctx, s.ID); err != nil {
			t.Fatalf("deleting twice: %v", err)
		}
		if err := st.Delete(ctx, ""); err != nil {
			t.Fatalf("deleting an empty id: %v", err)
		}
	})

	t.Run("IdleTimeout", func(t *testing.T) {
		st, clk := setup(t)
		s := create(t, st)
		clk.Add(DefaultIdleTimeout - time.Second)
		load(t, st, s.ID)
		clk.Add(2 * time.Second)
		notFound(t, st, s.ID)
		if h.ttl(t, st, s.ID) >= 0 {
			t.Fatal("expired record still stored after Load")
		}

		// Touch slides the idle timeout.
		clk.t = t0
		s = create(t, st)
		clk.Add(20 * time.Minute)
		if err := st.Touch(ctx, s.ID, clk.Now()); err != nil {
			t.Fatal(err)
		}
		clk.Add(20 * time.Minute)
		load(t, st, s.ID)
		clk.Add(11 * time.Minute)
		notFound(t, st, s.ID)
		if err := st.Touch(ctx, s.ID, clk.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Touch of an expired session: %v, want ErrNotFound", err)
		}
	})

	t.Run("Lifetime", func(t *testing.T) {
		st, clk := setup(t)
		s := create(t, st)
		for clk.Now().Before(s.Deadline.Add(-25 * time.Minute)) {
			clk.Add(25 * time.Minute)
			if err := st.Touch(ctx, s.ID, clk.Now()); err != nil {
				t.Fatalf("Touch at %v: %v", clk.Now().Sub(t0), err)
			}
			load(t, st, s.ID)
		}
		clk.t = s.Deadline
		load(t, st, s.ID)
		clk.Add(time.Second)
		notFound(t, st, s.ID)
	})

	t.Run("TouchThrottle", func(t *testing.T) {
		st, clk := setup(t)
		s := create(t, st)
		clk.Add(DefaultTouchEvery - time.Second)
		if err := st.Touch(ctx, s.ID, clk.Now()); err != nil {
			t.Fatal(err)
		}
		if got := load(t, st, s.ID); !got.LastSeen.Equal(t0) {
			t.Fatalf("Touch within TouchEvery wrote LastSeen %v", got.LastSeen)
		}
		clk.Add(time.Second)
		if err := st.Touch(ctx, s.ID, clk.Now()); err != nil {
			t.Fatal(err)
		}
		got := load(t, st, s.ID)
		if !got.LastSeen.Equal(t0.Add(DefaultTouchEvery)) || got.Version != 1 {
			t.Fatalf("after Touch: LastSeen %v, Version %d", got.LastSeen, got.Version)
		}
		if got.AccessToken != s.AccessToken || got.RefreshToken != s.RefreshToken {
			t.Fatal("Touch lost the tokens")
		}
		// A Touch does not make a Save on the version it loaded conflict.
		if err := st.Save(ctx, got, 1); err != nil {
			t.Fatalf("Save after Touch: %v", err)
		}
		if err := st.Touch(ctx, "no-such-session", clk.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Touch of a missing session: %v, want ErrNotFound", err)
		}
	})

	t.Run("TTL", func(t *testing.T) {
		st, clk := setup(t)
		s := create(t, st)
		checkTTL(t, st, s.ID, DefaultIdleTimeout)

		clk.Add(10 * time.Minute)
		if err := st.Touch(ctx, s.ID, clk.Now()); err != nil {
			t.Fatal(err)
		}
		checkTTL(t, st, s.ID, DefaultIdleTimeout)

		// Near the deadline the TTL is what is left of the lifetime.
		short := &Session{Deadline: clk.Now().Add(7 * time.Minute)}
		if err := st.Create(ctx, short); err != nil {
			t.Fatal(err)
		}
		checkTTL(t, st, short.ID, 7*time.Minute)
		clk.Add(3 * time.Minute)
		if err := st.Save(ctx, short, short.Version); err != nil {
			t.Fatal(err)
		}
		checkTTL(t, st, short.ID, 4*time.Minute)
	})

	t.Run("NoSecretsStored", func(t *testing.T) {
		st, _ := setup(t)
		var secrets []string
		var keys []string
		for range 3 {
			s := create(t, st)
			s.AccessToken, s.RefreshToken = "AT-"+s.ID[:10], "RT-"+s.ID[10:20]
			if err := st.Save(ctx, s, s.Version); err != nil {
				t.Fatal(err)
			}
			secrets = append(secrets, s.ID, s.AccessToken, s.RefreshToken)
			keys = append(keys, StoreKey(s.ID))
		}
		secrets = append(secrets, "AT-secret-value", "RT-secret-value")
		dump := h.dump(t, st)
		if len(dump) != 3 {
			t.Fatalf("store holds %d records, want 3", len(dump))
		}
		for k, v := range dump {
			for _, secret := range secrets {
				if strings.Contains(k, secret) || bytes.Contains(v, []byte(secret)) {
					t.Fatalf("stored key or value contains a secret (%.6s…)", secret)
				}
			}
		}
		for _, sk := range keys {
			found := false
			for k := range dump {
				found = found || strings.Contains(k, sk)
			}
			if !found {
				t.Fatalf("no stored key contains store key %s", sk)
			}
		}
	})

	t.Run("Closed", func(t *testing.T) {
		st, _ := setup(t)
		s := create(t, st)
		if err := st.Ping(ctx); err != nil {
			t.Fatalf("Ping: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Load(ctx, s.ID); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
			t.Fatalf("Load on a closed store: %v, want ErrUnavailable", err)
		}
		if err := st.Ping(ctx); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Ping on a closed store: %v", err)
		}
		if err := st.Create(ctx, &Session{}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Create on a closed store: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})

	t.Run("Canceled", func(t *testing.T) {
		st, _ := setup(t)
		s := create(t, st)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := st.Load(cctx, s.ID); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
			t.Fatalf("Load with a canceled context: %v", err)
		}
	})
}

func TestMemoryStore(t *testing.T) {
	backend := func(st Store) *memBackend { return st.(*MemoryStore).core.b.(*memBackend) }
	testStore(t, harness{
		open: func(t *testing.T, o Options) Store {
			st, err := NewMemoryStore(o)
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
		ttl: func(t *testing.T, st Store, id string) time.Duration {
			m := backend(st)
			m.mu.Lock()
			defer m.mu.Unlock()
			e, ok := m.live(StoreKey(id))
			if !ok {
				return -1
			}
			return e.expires.Sub(m.now())
		},
		dump: func(t *testing.T, st Store) map[string][]byte {
			m := backend(st)
			m.mu.Lock()
			defer m.mu.Unlock()
			out := map[string][]byte{}
			for k, e := range m.entries {
				out[k] = e.val
			}
			return out
		},
	})
}

func TestMemoryJanitor(t *testing.T) {
	clk := &clock{t: t0}
	st, err := NewMemoryStore(Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := &Session{AccessToken: "a"}
	if err := st.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	m := st.core.b.(*memBackend)
	m.sweep()
	if len(m.entries) != 1 {
		t.Fatal("sweep dropped a live session")
	}
	clk.Add(DefaultIdleTimeout + time.Millisecond)
	m.sweep()
	if len(m.entries) != 0 {
		t.Fatal("sweep kept an expired session")
	}
}

func TestOptionsValidation(t *testing.T) {
	for name, o := range map[string]Options{
		"negative idle":     {IdleTimeout: -time.Second},
		"negative lifetime": {Lifetime: -time.Second},
		"touch beyond idle": {IdleTimeout: time.Minute, TouchEvery: time.Minute},
		"negative touch":    {TouchEvery: -1},
	} {
		if _, err := NewMemoryStore(o); err == nil {
			t.Errorf("%s: NewMemoryStore succeeded", name)
		}
	}
}
