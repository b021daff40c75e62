package sessions

import (
	"context"
	"errors"
	"testing"
	"time"
)

// lockStores runs test against a memory store and against two Redis stores (two instances)
// sharing one redis-server; open returns the instances, all locking the same sessions.
func lockStores(t *testing.T, test func(t *testing.T, open func(t *testing.T, n int) []LockingStore)) {
	t.Run("memory", func(t *testing.T) {
		test(t, func(t *testing.T, n int) []LockingStore {
			st, err := NewMemoryStore(Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			out := make([]LockingStore, n)
			for i := range out {
				out[i] = st // one process: one store
			}
			return out
		})
	})
	t.Run("redis", func(t *testing.T) {
		f := newRedisFixture(t)
		keys := mustRing(t, testKey(1))
		test(t, func(t *testing.T, n int) []LockingStore {
			f.n++
			prefix := "lk" + string(rune('a'+f.n)) + ":"
			out := make([]LockingStore, n)
			for i := range out {
				st := f.open(t, prefix, Options{Keys: keys})
				t.Cleanup(func() { st.Close() })
				out[i] = st
			}
			return out
		})
	})
}

func TestLock(t *testing.T) {
	ctx := context.Background()
	lockStores(t, func(t *testing.T, open func(t *testing.T, n int) []LockingStore) {
		st := open(t, 2)
		a, b := st[0], st[1]
		id, other := mustID(t), mustID(t)

		l1, err := a.TryLock(ctx, id, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.TryLock(ctx, id, time.Minute); !errors.Is(err, ErrLocked) {
			t.Fatalf("second TryLock: %v, want ErrLocked", err)
		}
		lo, err := b.TryLock(ctx, other, time.Minute)
		if err != nil {
			t.Fatalf("TryLock of another session: %v", err)
		}
		if err := l1.Renew(ctx, time.Minute); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		if err := l1.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := l1.Release(ctx); !errors.Is(err, ErrLockLost) {
			t.Fatalf("second Release: %v, want ErrLockLost", err)
		}
		l2, err := b.TryLock(ctx, id, time.Minute)
		if err != nil {
			t.Fatalf("TryLock after Release: %v", err)
		}
		_ = l2.Release(ctx)
		_ = lo.Release(ctx)

		if _, err := a.TryLock(ctx, "", time.Minute); !errors.Is(err, ErrNotFound) {
			t.Fatalf("TryLock of an empty ID: %v, want ErrNotFound", err)
		}
	})
}

// TestLockExpiry: a lease ends at its TTL unless renewed, and once it has ended, its Renew and
// Release touch nothing, in particular not the lock another holder has taken since.
func TestLockExpiry(t *testing.T) {
	ctx := context.Background()
	const ttl = 150 * time.Millisecond
	lockStores(t, func(t *testing.T, open func(t *testing.T, n int) []LockingStore) {
		st := open(t, 2)
		a, b := st[0], st[1]
		id := mustID(t)

		old, err := a.TryLock(ctx, id, ttl)
		if err != nil {
			t.Fatal(err)
		}
		// Renewed twice past its first TTL, the lease still holds.
		for range 2 {
			time.Sleep(ttl / 2)
			if err := old.Renew(ctx, ttl); err != nil {
				t.Fatalf("Renew: %v", err)
			}
		}
		if _, err := b.TryLock(ctx, id, ttl); !errors.Is(err, ErrLocked) {
			t.Fatalf("TryLock of a renewed lock: %v, want ErrLocked", err)
		}
		time.Sleep(ttl + 50*time.Millisecond)
		cur, err := b.TryLock(ctx, id, time.Minute)
		if err != nil {
			t.Fatalf("TryLock after expiry: %v", err)
		}
		if err := old.Release(ctx); !errors.Is(err, ErrLockLost) {
			t.Fatalf("Release by the former owner: %v, want ErrLockLost", err)
		}
		if err := old.Renew(ctx, time.Minute); !errors.Is(err, ErrLockLost) {
			t.Fatalf("Renew by the former owner: %v, want ErrLockLost", err)
		}
		if _, err := a.TryLock(ctx, id, time.Minute); !errors.Is(err, ErrLocked) {
			t.Fatalf("the former owner's Release deleted the new lock: TryLock = %v", err)
		}
		if err := cur.Release(ctx); err != nil {
			t.Fatalf("Release by the owner: %v", err)
		}
	})
}

// TestRedisLockKey: the lock shares the record's hash tag, has a TTL, and holds no session ID.
func TestRedisLockKey(t *testing.T) {
	f := newRedisFixture(t)
	ctx := context.Background()
	st := f.open(t, "lk:", Options{Keys: mustRing(t, testKey(1))})
	defer st.Close()
	id := mustID(t)
	l, err := st.TryLock(ctx, id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	key := "lk:{" + StoreKey(id) + "}:lock"
	if d := f.raw.PTTL(ctx, key).Val(); d <= 0 || d > time.Minute {
		t.Fatalf("PTTL %s = %v, want (0, 1m]", key, d)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.raw.Exists(ctx, key).Val(); n != 0 {
		t.Fatalf("lock key still exists after Release")
	}
	f.srv.Stop()
	if _, err := st.TryLock(ctx, id, time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("TryLock with Redis down: %v, want ErrUnavailable", err)
	}
	if err := l.Renew(ctx, time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Renew with Redis down: %v, want ErrUnavailable", err)
	}
	f.srv.Restart()
}

func mustID(t *testing.T) string {
	t.Helper()
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}
