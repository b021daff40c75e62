package sessions

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Errors returned by stores. Test them with errors.Is.
var (
	// ErrNotFound: the session does not exist, has expired, or the ID is malformed. The client
	// must sign in again.
	ErrNotFound = errors.New("session not found")
	// ErrConflict: Save's expected version is not the stored one (another writer won), or Create
	// found the ID already taken.
	ErrConflict = errors.New("session version conflict")
	// ErrUnavailable wraps every failure to reach the store (network, timeout, closed store).
	// The session may well exist: callers answer 503 and delete nothing.
	ErrUnavailable = errors.New("session store unavailable")
	// ErrUnreadable: a stored record cannot be decoded or its tokens cannot be opened (a key
	// was removed from the ring, or the data was altered). The record is left in place.
	ErrUnreadable = errors.New("session record unreadable")
)

// Store keeps sessions. Implementations are safe for concurrent use. Every method except Close
// honours ctx.
type Store interface {
	// Create stores a new session. It sets s.ID when empty (NewID), Created and LastSeen when
	// zero, caps Deadline at Created+Lifetime (setting it when zero), and sets Version to 1.
	// It returns ErrConflict if the ID is already taken.
	Create(ctx context.Context, s *Session) error
	// Load returns the session with this ID. A session idle for longer than IdleTimeout or past
	// its Deadline is deleted and reported as ErrNotFound.
	Load(ctx context.Context, id string) (*Session, error)
	// Save replaces the stored session if its version is still expectVersion, writing and
	// setting s.Version = expectVersion+1. It returns ErrConflict when the stored version
	// differs and ErrNotFound when the session is gone or expired. The record is written as
	// given: a Touch made since s was loaded is overwritten by s.LastSeen.
	Save(ctx context.Context, s *Session, expectVersion uint64) error
	// Touch records activity: the stored LastSeen becomes lastSeen, and the idle timeout
	// restarts from it. It writes nothing while lastSeen is within TouchEvery of the stored
	// LastSeen, and does not change Version, so it never makes a Save conflict. A Touch that
	// races with a Save is dropped.
	Touch(ctx context.Context, id string, lastSeen time.Time) error
	// Delete removes the session. Deleting a missing session is not an error.
	Delete(ctx context.Context, id string) error
	// Ping reports whether the store answers (nil) or not (an ErrUnavailable).
	Ping(ctx context.Context) error
	// Close releases the store's resources; later calls fail with ErrUnavailable. A store built
	// on a shared Redis (Redis.Store) leaves the pool open for the others.
	Close() error
}

// Defaults for Options.
const (
	DefaultIdleTimeout = 30 * time.Minute
	DefaultLifetime    = 12 * time.Hour
	// DefaultTouchEvery bounds writes to one per session per 5s (the design's "a few seconds"),
	// at the cost of up to 5s of idle-timeout accuracy.
	DefaultTouchEvery = 5 * time.Second
)

// Options configure a store. Zero values take the defaults.
type Options struct {
	// IdleTimeout ends a session this long after its LastSeen (default 30m).
	IdleTimeout time.Duration
	// Lifetime caps a session's Deadline at Created+Lifetime (default 12h).
	Lifetime time.Duration
	// TouchEvery is the least LastSeen advance that Touch writes (default 5s). It must be
	// shorter than IdleTimeout.
	TouchEvery time.Duration
	// Keys seal the tokens. Required for Redis; the memory store generates a process-local key
	// when nil.
	Keys *KeyRing
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives debug events; never tokens or IDs (default: no logging).
	Logger *zap.Logger
}

// core implements Store over a backend: encoding, sealing, timeouts and touch throttling, so
// that every backend behaves alike.
type core struct {
	b    backend
	o    Options
	name string // for errors: "memory", "redis"
}

// backend is raw storage of encoded records, keyed by store key. Errors: ErrNotFound,
// ErrConflict, or a wrapped ErrUnavailable.
type backend interface {
	get(ctx context.Context, key string) ([]byte, error)
	// create stores val only if key is absent (else ErrConflict).
	create(ctx context.Context, key string, val []byte, ttl time.Duration) error
	// cas stores val if the stored record's version is expect (else ErrConflict, or
	// ErrNotFound when absent).
	cas(ctx context.Context, key string, expect uint64, val []byte, ttl time.Duration) error
	del(ctx context.Context, key string) error
	ping(ctx context.Context) error
	close() error
}

func (o Options) withDefaults() (Options, error) {
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.Lifetime == 0 {
		o.Lifetime = DefaultLifetime
	}
	if o.TouchEvery == 0 {
		o.TouchEvery = min(DefaultTouchEvery, o.IdleTimeout/2)
	}
	switch {
	case o.IdleTimeout < 0, o.Lifetime < 0, o.TouchEvery < 0:
		return o, errors.New("session timeouts must be positive")
	case o.TouchEvery >= o.IdleTimeout:
		return o, errors.New("touch interval must be shorter than the idle timeout")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o, nil
}

// ttl returns how long a record with these times has left to live at now, min(idle end,
// deadline) - now, and false when now is past either limit. Stored TTLs are at least 1ms.
func (c *core) ttl(lastSeen, deadline, now time.Time) (time.Duration, bool) {
	end := lastSeen.Add(c.o.IdleTimeout)
	if deadline.Before(end) {
		end = deadline
	}
	if now.After(end) {
		return 0, false
	}
	return max(end.Sub(now), time.Millisecond), true
}

// Create implements Store.
func (c *core) Create(ctx context.Context, s *Session) error {
	if s == nil {
		return errors.New("creating session: nil session")
	}
	cp := *s
	if cp.ID == "" {
		id, err := NewID()
		if err != nil {
			return err
		}
		cp.ID = id
	}
	now := c.o.Now()
	if cp.Created.IsZero() {
		cp.Created = now
	}
	if cp.LastSeen.IsZero() {
		cp.LastSeen = now
	}
	if end := cp.Created.Add(c.o.Lifetime); cp.Deadline.IsZero() || cp.Deadline.After(end) {
		cp.Deadline = end
	}
	cp.Version = 1
	ttl, ok := c.ttl(cp.LastSeen, cp.Deadline, now)
	if !ok {
		return errors.New("creating session: already expired")
	}
	b, err := encode(&cp, c.o.Keys)
	if err != nil {
		return err
	}
	if err := c.b.create(ctx, StoreKey(cp.ID), b, ttl); err != nil {
		return fmt.Errorf("creating session: %w", err)
	}
	*s = cp
	return nil
}

// Load implements Store.
func (c *core) Load(ctx context.Context, id string) (*Session, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	key := StoreKey(id)
	r, err := c.read(ctx, key)
	if err != nil {
		return nil, err
	}
	return r.session(id, c.o.Keys)
}

// read returns the live record under key, deleting it when it has expired.
func (c *core) read(ctx context.Context, key string) (*record, error) {
	b, err := c.b.get(ctx, key)
	if err != nil {
		return nil, err
	}
	r, err := parseRecord(b)
	if err != nil {
		return nil, err
	}
	if _, ok := c.ttl(r.LastSeen, r.Deadline, c.o.Now()); !ok {
		c.expire(ctx, key)
		return nil, ErrNotFound
	}
	return r, nil
}

func (c *core) expire(ctx context.Context, key string) {
	if err := c.b.del(ctx, key); err != nil {
		c.o.Logger.Debug("deleting expired session", zap.String("store", c.name), zap.Error(err))
	}
}

// Save implements Store.
func (c *core) Save(ctx context.Context, s *Session, expectVersion uint64) error {
	if s == nil || !validID(s.ID) {
		return ErrNotFound
	}
	key := StoreKey(s.ID)
	ttl, ok := c.ttl(s.LastSeen, s.Deadline, c.o.Now())
	if !ok {
		c.expire(ctx, key)
		return ErrNotFound
	}
	cp := *s
	cp.Version = expectVersion + 1
	b, err := encode(&cp, c.o.Keys)
	if err != nil {
		return err
	}
	if err := c.b.cas(ctx, key, expectVersion, b, ttl); err != nil {
		return err
	}
	s.Version = cp.Version
	return nil
}

// Touch implements Store.
func (c *core) Touch(ctx context.Context, id string, lastSeen time.Time) error {
	if !validID(id) {
		return ErrNotFound
	}
	key := StoreKey(id)
	r, err := c.read(ctx, key)
	if err != nil {
		return err
	}
	if lastSeen.Sub(r.LastSeen) < c.o.TouchEvery {
		return nil
	}
	r.LastSeen = lastSeen
	ttl, ok := c.ttl(r.LastSeen, r.Deadline, c.o.Now())
	if !ok {
		return nil // past the deadline: the next read expires it
	}
	b, err := r.marshal()
	if err != nil {
		return err
	}
	err = c.b.cas(ctx, key, r.Version, b, ttl)
	if errors.Is(err, ErrConflict) {
		c.o.Logger.Debug("touch lost a race with a save", zap.String("store", c.name))
		return nil
	}
	return err
}

// Delete implements Store.
func (c *core) Delete(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	return c.b.del(ctx, StoreKey(id))
}

// Ping implements Store.
func (c *core) Ping(ctx context.Context) error { return c.b.ping(ctx) }

// Close implements Store.
func (c *core) Close() error { return c.b.close() }
