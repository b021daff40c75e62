package sessions

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Outcome says how a Refresh got its session.
type Outcome string

const (
	// Refreshed: this call ran the refresh function and saved its result.
	Refreshed Outcome = "refreshed"
	// Coalesced: another caller, here or on another instance, refreshed the session; this call
	// got its result without calling the identity service.
	Coalesced Outcome = "coalesced"
)

// Defaults for RefresherOptions.
const (
	DefaultRefreshTimeout = 15 * time.Second
	DefaultLockTTL        = 20 * time.Second
	DefaultPollEvery      = 50 * time.Millisecond

	// releaseTimeout bounds releasing the lock, which runs even when the refresh timed out.
	releaseTimeout = 2 * time.Second
)

// RefresherOptions configure a Refresher. Zero values take the defaults.
type RefresherOptions struct {
	// Timeout bounds a whole refresh: waiting for the lock or a peer, the refresh function and
	// the save (default 15s).
	Timeout time.Duration
	// LockTTL is the lease of the cross-instance lock, renewed every LockTTL/3 while the refresh
	// function runs (default 20s). Keep it longer than the identity call's timeout, so that a
	// stalled renewal cannot let a second instance redeem the same refresh token.
	LockTTL time.Duration
	// PollEvery is how often a waiter checks whether a peer has refreshed (default 50ms).
	PollEvery time.Duration
	// Now is the clock (default time.Now), used for the durations logged.
	Now func() time.Time
	// Logger receives debug events; never tokens or IDs (default: no logging).
	Logger *zap.Logger
}

// RefreshFunc exchanges cur's refresh token for new tokens and returns the session to save
// (cur itself, updated, or a copy with the same ID).
type RefreshFunc func(ctx context.Context, cur *Session) (*Session, error)

// Refresher refreshes each session exactly once at a time: callers in this process share one
// flight per session (single-flight), and instances sharing a store take the session's lock,
// so that a rotating refresh token is never redeemed twice. Safe for concurrent use.
type Refresher struct {
	store LockingStore
	o     RefresherOptions

	mu      sync.Mutex
	flights map[string]*flight // by session ID
}

// flight is one refresh in progress in this process; its result is set before done closes.
type flight struct {
	done    chan struct{}
	sess    *Session
	outcome Outcome
	err     error
}

// NewRefresher returns a Refresher over store.
func NewRefresher(store LockingStore, o RefresherOptions) (*Refresher, error) {
	if store == nil {
		return nil, errors.New("refresher needs a store")
	}
	if o.Timeout < 0 || o.LockTTL < 0 || o.PollEvery < 0 {
		return nil, errors.New("refresher durations must be positive")
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultRefreshTimeout
	}
	if o.LockTTL == 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.PollEvery == 0 {
		o.PollEvery = DefaultPollEvery
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return &Refresher{store: store, o: o, flights: map[string]*flight{}}, nil
}

// Refresh refreshes s with fn, once across every caller and instance: s is the session as the
// caller loaded it, and fn is called, at most once per version, with the stored session. The
// result is the session holding the new tokens, saved, with its outcome.
//
// The refresh runs detached from ctx, bounded by Timeout: a caller whose ctx ends gets
// ctx.Err() while the refresh goes on for the others. fn's errors are returned as they are
// (upstream.ErrRejected: delete the session; upstream.ErrUnavailable: keep it). Store failures
// and a Timeout spent waiting for a peer wrap ErrUnavailable; ErrNotFound means the session is
// gone. When Identity answered but the new tokens could not be saved (the store stayed
// unavailable for the rest of Timeout), the error wraps ErrUnavailable and the session returned
// holds the new tokens, so the request can still be served. Each caller gets its own copy of the
// session.
func (r *Refresher) Refresh(ctx context.Context, s *Session, fn RefreshFunc) (*Session, Outcome, error) {
	if s == nil || fn == nil {
		return nil, "", errors.New("refreshing session: nil session or function")
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	r.mu.Lock()
	f, joined := r.flights[s.ID]
	if !joined {
		f = &flight{done: make(chan struct{})}
		r.flights[s.ID] = f
		go r.fly(context.WithoutCancel(ctx), f, s.ID, copySession(s), fn)
	}
	r.mu.Unlock()

	select {
	case <-ctx.Done():
		return nil, "", ctx.Err()
	case <-f.done:
	}
	if f.err != nil {
		var unsaved *Session
		if f.sess != nil {
			unsaved = copySession(f.sess)
		}
		return unsaved, "", f.err
	}
	out := f.outcome
	if joined {
		out = Coalesced
	}
	return copySession(f.sess), out, nil
}

// fly runs a flight and publishes its result.
func (r *Refresher) fly(ctx context.Context, f *flight, id string, s *Session, fn RefreshFunc) {
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	start := r.o.Now()
	f.sess, f.outcome, f.err = r.refresh(ctx, s, fn)
	r.o.Logger.Debug("session refresh", zap.String("outcome", string(f.outcome)),
		zap.Duration("took", r.o.Now().Sub(start)), zap.Error(f.err))
	r.mu.Lock()
	delete(r.flights, id)
	r.mu.Unlock()
	close(f.done)
}

// refresh takes the session's lock and refreshes, or waits for the peer holding the lock to
// refresh, taking the lock over if the peer gives it up without a new version.
func (r *Refresher) refresh(ctx context.Context, s *Session, fn RefreshFunc) (*Session, Outcome, error) {
	t := time.NewTicker(r.o.PollEvery)
	defer t.Stop()
	for {
		l, err := r.store.TryLock(ctx, s.ID, r.o.LockTTL)
		if err == nil {
			return r.locked(ctx, l, s, fn)
		}
		if !errors.Is(err, ErrLocked) {
			return nil, "", fmt.Errorf("locking session for refresh: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, "", fmt.Errorf("%w: waiting for a concurrent refresh: %w", ErrUnavailable, ctx.Err())
		case <-t.C:
		}
		cur, err := r.store.Load(ctx, s.ID)
		if err != nil {
			return nil, "", fmt.Errorf("waiting for a concurrent refresh: %w", err)
		}
		if cur.Version > s.Version {
			return cur, Coalesced, nil
		}
	}
}

// locked refreshes under the lease l, renewing it while fn runs, and releases it.
func (r *Refresher) locked(ctx context.Context, l Lease, s *Session, fn RefreshFunc) (*Session, Outcome, error) {
	stop := r.keepAlive(ctx, l)
	defer func() {
		stop()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		if err := l.Release(rctx); err != nil {
			r.o.Logger.Warn("releasing session refresh lock", zap.Error(err))
		}
	}()

	cur, err := r.store.Load(ctx, s.ID)
	if err != nil {
		return nil, "", fmt.Errorf("reloading session for refresh: %w", err)
	}
	if cur.Version != s.Version {
		return cur, Coalesced, nil // a peer refreshed already: its refresh token is rotated
	}
	next, err := fn(ctx, cur)
	if err != nil {
		return nil, "", err
	}
	if next == nil || next.ID != cur.ID {
		return nil, "", errors.New("refreshing session: refresh function returned another session")
	}
	// Identity has rotated the refresh token: losing the new tokens now would end the session
	// at its next refresh. While the store is unavailable, keep trying as long as the refresh's
	// time lasts (the lease is still renewed).
	err = r.store.Save(ctx, next, cur.Version)
	for errors.Is(err, ErrUnavailable) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(r.o.PollEvery):
			err = r.store.Save(ctx, next, cur.Version)
		}
	}
	if errors.Is(err, ErrConflict) {
		r.o.Logger.Warn("session changed during refresh; keeping the stored version")
		if cur, err = r.store.Load(ctx, s.ID); err != nil {
			return nil, "", fmt.Errorf("reloading session after a conflict: %w", err)
		}
		return cur, Coalesced, nil
	}
	if err != nil {
		// The new tokens are returned with the error, so that the requests of this flight can
		// still be served with them.
		return next, "", fmt.Errorf("saving refreshed session: %w", err)
	}
	return next, Refreshed, nil
}

// keepAlive renews l every LockTTL/3 until the returned stop is called; stop waits for it.
func (r *Refresher) keepAlive(ctx context.Context, l Lease) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(max(r.o.LockTTL/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			err := l.Renew(ctx, r.o.LockTTL)
			switch {
			case err == nil, ctx.Err() != nil:
			case errors.Is(err, ErrLockLost):
				r.o.Logger.Warn("session refresh lock expired while refreshing; LockTTL too short?")
				return
			default: // transient: try again at the next tick, while the lease lasts
				r.o.Logger.Warn("renewing session refresh lock", zap.Error(err))
			}
		}
	}()
	return func() { cancel(); <-done }
}

// copySession returns a copy of s that shares no slice or map with it.
func copySession(s *Session) *Session {
	cp := *s
	cp.Roles = slices.Clone(s.Roles)
	cp.Claims = maps.Clone(s.Claims)
	return &cp
}
