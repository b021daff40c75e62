package sessions

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"time"
)

// janitorEvery is how often the memory store drops expired records.
const janitorEvery = time.Minute

// MemoryStore is a Store held in this process's memory: sessions are lost on restart and not
// shared between instances. A janitor goroutine drops expired records until Close.
type MemoryStore struct {
	core
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns a memory store. With o.Keys nil it seals under a random key that lives
// as long as the store.
func NewMemoryStore(o Options) (*MemoryStore, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Keys == nil {
		k := make([]byte, KeySize)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("generating session key: %w", err)
		}
		o.Keys, err = NewKeyRing(k)
		clear(k)
		if err != nil {
			return nil, err
		}
	}
	m := &memBackend{entries: map[string]memEntry{}, now: o.Now, stop: make(chan struct{}), done: make(chan struct{})}
	go m.janitor(janitorEvery)
	return &MemoryStore{core{b: m, o: o, name: "memory"}}, nil
}

type memBackend struct {
	now func() time.Time

	mu      sync.Mutex
	entries map[string]memEntry
	closed  bool

	stop, done chan struct{}
}

type memEntry struct {
	val     []byte
	expires time.Time
}

var errMemClosed = fmt.Errorf("%w: memory store is closed", ErrUnavailable)

func (m *memBackend) janitor(every time.Duration) {
	defer close(m.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep drops expired entries.
func (m *memBackend) sweep() {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, e := range m.entries {
		if now.After(e.expires) {
			delete(m.entries, k)
		}
	}
}

// live returns the unexpired entry under key; m.mu is held.
func (m *memBackend) live(key string) (memEntry, bool) {
	e, ok := m.entries[key]
	if ok && m.now().After(e.expires) {
		delete(m.entries, key)
		return memEntry{}, false
	}
	return e, ok
}

func (m *memBackend) get(ctx context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	e, ok := m.live(key)
	if !ok {
		return nil, ErrNotFound
	}
	return bytes.Clone(e.val), nil
}

func (m *memBackend) create(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	if _, ok := m.live(key); ok {
		return ErrConflict
	}
	m.entries[key] = memEntry{val: bytes.Clone(val), expires: m.now().Add(ttl)}
	return nil
}

func (m *memBackend) cas(ctx context.Context, key string, expect uint64, val []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	e, ok := m.live(key)
	if !ok {
		return ErrNotFound
	}
	r, err := parseRecord(e.val)
	if err != nil {
		return err
	}
	if r.Version != expect {
		return ErrConflict
	}
	m.entries[key] = memEntry{val: bytes.Clone(val), expires: m.now().Add(ttl)}
	return nil
}

func (m *memBackend) del(ctx context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	delete(m.entries, key)
	return nil
}

func (m *memBackend) ping(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.check(ctx)
}

// check fails when the store is closed or ctx is done; m.mu is held.
func (m *memBackend) check(ctx context.Context) error {
	if m.closed {
		return errMemClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

func (m *memBackend) close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.entries = nil
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	return nil
}

// Locks (see lock.go): a lock is an entry under "<store key>:lock" whose value is the owner
// token. Store keys are hex, so lock keys never name a session.

func memLockKey(key string) string { return key + ":lock" }

func (m *memBackend) lock(ctx context.Context, key, token string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	if _, ok := m.live(memLockKey(key)); ok {
		return ErrLocked
	}
	m.entries[memLockKey(key)] = memEntry{val: []byte(token), expires: m.now().Add(ttl)}
	return nil
}

func (m *memBackend) renew(ctx context.Context, key, token string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.ownedLock(ctx, key, token)
	if err == nil {
		e.expires = m.now().Add(ttl)
		m.entries[memLockKey(key)] = e
	}
	return err
}

func (m *memBackend) unlock(ctx context.Context, key, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.ownedLock(ctx, key, token)
	if err == nil {
		delete(m.entries, memLockKey(key))
	}
	return err
}

// ownedLock returns the live lock of key if token holds it, else ErrLockLost. Callers hold m.mu.
func (m *memBackend) ownedLock(ctx context.Context, key, token string) (memEntry, error) {
	if err := m.check(ctx); err != nil {
		return memEntry{}, err
	}
	e, ok := m.live(memLockKey(key))
	if !ok || string(e.val) != token {
		return memEntry{}, ErrLockLost
	}
	return e, nil
}
