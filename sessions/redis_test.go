package sessions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sitegate/sitegate/internal/redistest"
)

// redisFixture is one redis-server with a raw client for inspecting what the stores wrote.
type redisFixture struct {
	srv *redistest.Server
	raw *redis.Client
	n   int
}

func newRedisFixture(t *testing.T) *redisFixture {
	srv := redistest.Start(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { raw.Close() })
	return &redisFixture{srv: srv, raw: raw}
}

// open returns a store on the fixture's server under a prefix of its own.
func (f *redisFixture) open(t *testing.T, prefix string, o Options) *RedisStore {
	t.Helper()
	if prefix == "" {
		f.n++
		prefix = fmt.Sprintf("t%d:", f.n)
	}
	st, err := NewRedisStore(RedisOptions{URL: "redis://" + f.srv.Addr, KeyPrefix: prefix, OpTimeout: time.Second}, o)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func prefixOf(st Store) string { return st.(*RedisStore).core.b.(*redisBackend).prefix }

func TestRedisStore(t *testing.T) {
	f := newRedisFixture(t)
	ctx := context.Background()
	testStore(t, harness{
		open: func(t *testing.T, o Options) Store { return f.open(t, "", o) },
		ttl: func(t *testing.T, st Store, id string) time.Duration {
			d, err := f.raw.PTTL(ctx, prefixOf(st)+"{"+StoreKey(id)+"}:s").Result()
			if err != nil {
				t.Fatal(err)
			}
			return d // -2ns when absent, -1ns without expiry
		},
		dump: func(t *testing.T, st Store) map[string][]byte {
			out := map[string][]byte{}
			iter := f.raw.Scan(ctx, 0, "*", 100).Iterator()
			for iter.Next(ctx) {
				if !strings.HasPrefix(iter.Val(), prefixOf(st)) {
					continue
				}
				v, err := f.raw.Get(ctx, iter.Val()).Bytes()
				if err != nil {
					t.Fatal(err)
				}
				out[iter.Val()] = v
			}
			if err := iter.Err(); err != nil {
				t.Fatal(err)
			}
			return out
		},
		ttlSlack: 2 * time.Second,
	})
}

func TestRedisKeyLayout(t *testing.T) {
	f := newRedisFixture(t)
	ctx := context.Background()
	st, err := NewRedisStore(RedisOptions{URL: "redis://" + f.srv.Addr}, Options{Keys: mustRing(t, testKey(1))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := &Session{AccessToken: "a"}
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	keys, err := f.raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := "sitegate:{" + StoreKey(s.ID) + "}:s"; len(keys) != 1 || keys[0] != want {
		t.Fatalf("keys = %q, want [%q]", keys, want)
	}
}

// TestRedisOutage: while Redis is down every operation reports ErrUnavailable, never
// ErrNotFound; the same store works again once Redis is back.
func TestRedisOutage(t *testing.T) {
	f := newRedisFixture(t)
	ctx := context.Background()
	st := f.open(t, "", Options{Keys: mustRing(t, testKey(1))})
	defer st.Close()
	s := &Session{AccessToken: "a"}
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}

	f.srv.Stop()
	unavailable := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
			t.Fatalf("%s while Redis is down: %v, want ErrUnavailable", op, err)
		}
	}
	_, err := st.Load(ctx, s.ID)
	unavailable("Load", err)
	unavailable("Save", st.Save(ctx, s, s.Version))
	unavailable("Touch", st.Touch(ctx, s.ID, t0.Add(time.Hour)))
	unavailable("Delete", st.Delete(ctx, s.ID))
	unavailable("Create", st.Create(ctx, &Session{}))
	unavailable("Ping", st.Ping(ctx))

	f.srv.Restart() // an empty server: the data did not survive
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping after restart: %v", err)
	}
	if _, err := st.Load(ctx, s.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load after restart: %v, want ErrNotFound", err)
	}
	s2 := &Session{AccessToken: "b"}
	if err := st.Create(ctx, s2); err != nil {
		t.Fatalf("Create after restart: %v", err)
	}
	if got, err := st.Load(ctx, s2.ID); err != nil || got.AccessToken != "b" {
		t.Fatalf("Load after restart: %+v, %v", got, err)
	}
}

// TestRedisKeyRotation: instances sharing Redis during a key rotation.
func TestRedisKeyRotation(t *testing.T) {
	f := newRedisFixture(t)
	ctx := context.Background()
	oldKey, newKey := testKey(1), testKey(2)
	before := f.open(t, "rot:", Options{Keys: mustRing(t, oldKey)})
	during := f.open(t, "rot:", Options{Keys: mustRing(t, newKey, oldKey)})
	after := f.open(t, "rot:", Options{Keys: mustRing(t, newKey)})
	for _, st := range []*RedisStore{before, during, after} {
		defer st.Close()
	}

	s := &Session{AccessToken: "AT-old", RefreshToken: "RT-old"}
	if err := before.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	got, err := during.Load(ctx, s.ID)
	if err != nil || got.AccessToken != "AT-old" {
		t.Fatalf("rotated ring loading an old record: %+v, %v", got, err)
	}
	if _, err := after.Load(ctx, s.ID); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("new key alone on an old record: %v, want ErrUnreadable", err)
	}
	got.AccessToken = "AT-new"
	if err := during.Save(ctx, got, got.Version); err != nil {
		t.Fatal(err)
	}
	if got, err := after.Load(ctx, s.ID); err != nil || got.AccessToken != "AT-new" {
		t.Fatalf("new writes are not sealed with the new key: %+v, %v", got, err)
	}
	if _, err := before.Load(ctx, s.ID); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("old key alone on a new record: %v, want ErrUnreadable", err)
	}
	// An unreadable record is kept, not deleted.
	if n, _ := f.raw.Exists(ctx, "rot:{"+StoreKey(s.ID)+"}:s").Result(); n != 1 {
		t.Fatal("unreadable record was deleted")
	}

	// A record moved under another session's key does not open.
	other := &Session{AccessToken: "AT-other"}
	if err := during.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	v, _ := f.raw.Get(ctx, "rot:{"+StoreKey(s.ID)+"}:s").Bytes()
	f.raw.Set(ctx, "rot:{"+StoreKey(other.ID)+"}:s", v, time.Minute)
	if _, err := during.Load(ctx, other.ID); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("record moved to another key: %v, want ErrUnreadable", err)
	}
}

func TestNewRedisStoreOptions(t *testing.T) {
	keys := mustRing(t, testKey(1))
	// No network I/O in the constructor: nothing listens here.
	for name, ro := range map[string]RedisOptions{
		"url":      {URL: "redis://user:pw@127.0.0.1:1/2?dial_timeout=1s"},
		"tls url":  {URL: "rediss://127.0.0.1:1"},
		"sentinel": {MasterName: "mymaster", SentinelAddrs: []string{"127.0.0.1:1"}},
		"cluster":  {ClusterAddrs: []string{"127.0.0.1:1"}, DisableIdentity: true},
	} {
		st, err := NewRedisStore(ro, Options{Keys: keys})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		st.Close()
	}
	for name, tc := range map[string]struct {
		ro   RedisOptions
		keys *KeyRing
	}{
		"no keys":           {RedisOptions{URL: "redis://127.0.0.1"}, nil},
		"nothing":           {RedisOptions{}, keys},
		"two modes":         {RedisOptions{URL: "redis://127.0.0.1", ClusterAddrs: []string{"a:1"}}, keys},
		"sentinel no name":  {RedisOptions{SentinelAddrs: []string{"a:1"}}, keys},
		"name no sentinels": {RedisOptions{URL: "redis://127.0.0.1", MasterName: "m"}, keys},
		"cluster db":        {RedisOptions{ClusterAddrs: []string{"a:1"}, DB: 1}, keys},
		"scheme":            {RedisOptions{URL: "http://user:hunter2@127.0.0.1"}, keys},
		"bad url":           {RedisOptions{URL: "redis://user:hunter2@127.0.0.1:6379/x"}, keys},
		"malformed url":     {RedisOptions{URL: "redis://user:hunter2@[::1"}, keys},
	} {
		_, err := NewRedisStore(tc.ro, Options{Keys: tc.keys})
		if err == nil {
			t.Errorf("%s: NewRedisStore succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error leaks the password: %v", name, err)
		}
	}
}

// Stores on one shared Redis: closing a store leaves the others working; closing the Redis ends
// them all.
func TestSharedRedis(t *testing.T) {
	f := newRedisFixture(t)
	r, err := OpenRedis(RedisOptions{URL: "redis://" + f.srv.Addr, KeyPrefix: "shared:", OpTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	keys := mustRing(t, testKey(1))
	a, err := r.Store(Options{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Store(Options{Keys: keys, IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store(Options{}); err == nil {
		t.Error("a store without keys was accepted")
	}
	ctx := context.Background()
	s := &Session{UserID: "u1", AccessToken: "at", AccessExpiry: time.Now().Add(time.Hour)}
	if err := a.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := b.Load(ctx, s.ID)
	if err != nil {
		t.Fatalf("other store after one closed: %v", err)
	}
	if got.UserID != "u1" || got.AccessToken != "at" {
		t.Errorf("loaded %+v", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx, s.ID); !errors.Is(err, ErrUnavailable) {
		t.Errorf("load after the Redis closed: %v, want ErrUnavailable", err)
	}
}
