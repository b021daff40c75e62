package sessions

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"
)

// Errors of the per-session lock.
var (
	// ErrLocked: another holder has the session's lock.
	ErrLocked = errors.New("session locked")
	// ErrLockLost: the lease expired (and may have been taken by another holder) before Renew
	// or Release; nothing was changed.
	ErrLockLost = errors.New("session lock lost")
)

// Locker hands out per-session lease locks. MemoryStore and RedisStore implement it; the Redis
// lock is shared by every instance on the same Redis.
type Locker interface {
	// TryLock takes the lock of the session with this ID for ttl without waiting. It returns
	// ErrLocked when another holder has it and an ErrUnavailable when the store cannot be
	// reached.
	TryLock(ctx context.Context, id string, ttl time.Duration) (Lease, error)
}

// LockingStore is a Store that can also lock sessions.
type LockingStore interface {
	Store
	Locker
}

var (
	_ LockingStore = (*MemoryStore)(nil)
	_ LockingStore = (*RedisStore)(nil)
)

// Lease is a held lock. It expires on its own after its TTL unless renewed.
type Lease interface {
	// Renew extends the lease to ttl from now. It returns ErrLockLost if the lease has expired.
	Renew(ctx context.Context, ttl time.Duration) error
	// Release gives the lock up. It deletes the lock only if this lease still owns it, and
	// returns ErrLockLost otherwise.
	Release(ctx context.Context) error
}

// lockBackend is the lock side of a backend, keyed by store key. Each lock has an owner token:
// renew and unlock act only when the stored token is theirs (else ErrLockLost), lock only when
// no lock is held (else ErrLocked). Other errors wrap ErrUnavailable.
type lockBackend interface {
	lock(ctx context.Context, key, token string, ttl time.Duration) error
	renew(ctx context.Context, key, token string, ttl time.Duration) error
	unlock(ctx context.Context, key, token string) error
}

// TryLock implements Locker.
func (c *core) TryLock(ctx context.Context, id string, ttl time.Duration) (Lease, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	if ttl <= 0 {
		return nil, errors.New("locking session: lease ttl must be positive")
	}
	lb, ok := c.b.(lockBackend)
	if !ok {
		return nil, fmt.Errorf("locking session: the %s store has no locks", c.name)
	}
	l := &lease{b: lb, key: StoreKey(id), token: rand.Text()}
	if err := lb.lock(ctx, l.key, l.token, ttl); err != nil {
		return nil, err
	}
	return l, nil
}

type lease struct {
	b     lockBackend
	key   string
	token string
}

func (l *lease) Renew(ctx context.Context, ttl time.Duration) error {
	if ttl <= 0 {
		return errors.New("renewing session lock: lease ttl must be positive")
	}
	return l.b.renew(ctx, l.key, l.token, ttl)
}

func (l *lease) Release(ctx context.Context) error { return l.b.unlock(ctx, l.key, l.token) }
