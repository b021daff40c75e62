// Package service holds the sidecar's service identity token: the bearer token of one configured
// credential (an OAuth2 client, a service user), fetched from Identity by a FetchFunc, kept fresh
// in the background and shared by every instance through a session store, so that a fleet of
// sidecars makes one fetch per token lifetime.
//
// The token is a sessions.Session record under a fixed ID, sealed by the store's key ring like any
// session. Each Source keeps an in-process copy and serves requests from it without I/O. A
// background loop replaces it before it expires through a sessions.Refresher (a lease lock and a
// compare-and-set on the record's version): instances whose timers fire together make one fetch,
// the others adopt its result. When the store is unavailable each instance fetches for itself and
// returns to the shared record once the store answers again.
//
// This package does not import Caddy.
package service

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/upstream"
)

// Defaults for Options.
const (
	DefaultRefreshBefore = 60 * time.Second
	DefaultMinBackoff    = time.Second
	DefaultMaxBackoff    = 30 * time.Second
)

// ForceEvery is the least time between two fetches forced by Invalidate on one Source, and the
// least age of a token that Invalidate replaces.
const ForceEvery = 10 * time.Second

// maxIDLen is the longest ID the session stores accept.
const maxIDLen = 256

// maxRounds bounds the store round trips of one refresh (a record that vanished, could not be
// read, or was replaced by a peer with a record no better than ours).
const maxRounds = 3

// ErrTooSoon is returned by Invalidate when the rejected token was fetched, or a fetch was
// forced, less than ForceEvery ago: the upstream's 401 is not about an old token, so it is passed
// through rather than answered with another fetch.
var ErrTooSoon = errors.New("service token was fetched, or a fetch forced, less than 10s ago; not fetching again")

// FetchFunc gets new tokens for the service identity. prev is the current tokens (nil when there
// are none): a client_credentials fetch ignores it; a service user's fetch refreshes with it and
// logs in again when the refresh is rejected. Errors wrap upstream.ErrRejected (the credentials
// were refused) or upstream.ErrUnavailable; they are logged, so they must hold no secret (the
// upstream clients' errors hold none).
type FetchFunc func(ctx context.Context, prev *upstream.Tokens) (*upstream.Tokens, error)

// Observer receives the Source's events, for metrics. Its methods must not block.
type Observer interface {
	// Fetched is called once per call of Fetch with its result: "ok", "rejected" or
	// "unavailable" (any other error, or a token that is empty or already expired).
	Fetched(result string)
	// Replaced is called after a successful fetch that replaced a token, with the age of that
	// token (the time since it was fetched).
	Replaced(age time.Duration)
}

// Options configure a Source.
type Options struct {
	// Store keeps the token record. Required: a MemoryStore for one instance, a Redis store to
	// share one token across replicas. Its IdleTimeout must exceed the token lifetime (every
	// fetch sets the record's LastSeen to the fetch time, and the record must outlive the token
	// it holds); the record is recreated, with one fetch, when it reaches the store's Lifetime.
	Store sessions.LockingStore
	// ID is the record's ID in the store, at most 256 bytes. Required. The caller derives it from
	// the credential's configuration (issuer, client ID, ...), so that instances with the same
	// credential share it; it must not be a secret.
	ID string
	// Fetch gets new tokens. Required.
	Fetch FetchFunc
	// Dialect is recorded in the stored record (oauth2, fabric_v1, ece).
	Dialect string
	// RefreshBefore sets the refresh window: a token is refreshed when it expires within
	// max(RefreshBefore, lifetime/10), capped at lifetime/2, lifetime being the time from its fetch
	// to its expiry (default 60s).
	RefreshBefore time.Duration
	// MinBackoff and MaxBackoff bound the delay before retrying a failed refresh: exponential,
	// with jitter (defaults 1s and 30s). MinBackoff is also the least time between two refreshes.
	MinBackoff, MaxBackoff time.Duration
	// Refresher times the locked refresh; its Now and Logger default to the Source's. Keep its
	// Timeout (default 15s) well inside the refresh window: a refresh that waits that long for a
	// stuck peer or store falls back to a fetch of its own only then.
	Refresher sessions.RefresherOptions
	// Observer receives fetch results and token ages (optional).
	Observer Observer
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives refresh events; never a token (default: no logging).
	Logger *zap.Logger
}

func (o Options) withDefaults() (Options, error) {
	switch {
	case o.Store == nil:
		return o, errors.New("service token needs a store")
	case o.ID == "", len(o.ID) > maxIDLen:
		return o, fmt.Errorf("service token needs a record ID of 1 to %d bytes", maxIDLen)
	case o.Fetch == nil:
		return o, errors.New("service token needs a fetch function")
	case o.RefreshBefore < 0, o.MinBackoff < 0, o.MaxBackoff < 0:
		return o, errors.New("service token durations must be positive")
	}
	if o.RefreshBefore == 0 {
		o.RefreshBefore = DefaultRefreshBefore
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.MaxBackoff < o.MinBackoff {
		return o, errors.New("service token max backoff is shorter than min backoff")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	r := &o.Refresher
	if r.Timeout == 0 {
		r.Timeout = sessions.DefaultRefreshTimeout
	}
	if r.LockTTL == 0 {
		r.LockTTL = sessions.DefaultLockTTL
	}
	if r.PollEvery == 0 {
		r.PollEvery = sessions.DefaultPollEvery
	}
	if r.Now == nil {
		r.Now = o.Now
	}
	if r.Logger == nil {
		r.Logger = o.Logger
	}
	return o, nil
}

// Source keeps one service token fresh and hands it out. Safe for concurrent use.
type Source struct {
	o   Options
	ref *sessions.Refresher

	cur  atomic.Pointer[token] // what Token serves; nil until the first token
	next atomic.Int64          // Unix nanoseconds of the loop's next attempt

	// sem is held by whoever refreshes, the loop or Invalidate: one refresh at a time, and a
	// fetch without the store is never made twice by concurrent callers.
	sem chan struct{}
	// Guarded by sem.
	known      *sessions.Session // the record as last read from the store; nil: load it
	lastForced time.Time         // the last refresh forced by Invalidate

	wake      chan struct{} // Invalidate replaced the token: the loop reschedules
	ready     chan struct{} // closed after the loop's first attempt, or by Close
	readyOnce sync.Once
	startOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed when the loop has ended, or by Close when it never started
}

// token is a token served by Token: a record holding a valid access token. Never modified.
type token struct {
	sess      *sessions.Session
	refreshAt time.Time // the start of its refresh window
}

// New returns a Source. It does no I/O: Start fetches.
func New(o Options) (*Source, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	ref, err := sessions.NewRefresher(o.Store, o.Refresher)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Source{
		o: o, ref: ref,
		sem:  make(chan struct{}, 1),
		wake: make(chan struct{}, 1), ready: make(chan struct{}), done: make(chan struct{}),
		ctx: ctx, cancel: cancel,
	}, nil
}

// Start starts the background loop: it adopts the stored token, or fetches one, and refreshes it
// before it expires. Calling it again, or after Close, does nothing.
func (s *Source) Start() {
	s.startOnce.Do(func() { go s.run() })
}

// Close stops the loop and waits for it. Token goes on serving the current token until it
// expires. A refresh in flight in the Refresher may finish after Close (bounded by its Timeout).
func (s *Source) Close() {
	s.cancel()
	s.startOnce.Do(func() { close(s.done) }) // never started: nothing to wait for
	<-s.done
	s.markReady()
}

// Token returns a valid access token. While a token is valid it is an atomic load and a clock
// read, without allocation or I/O. Before the first token arrives it waits for the first attempt,
// bounded by ctx. When there is no valid token (the first fetch failed, or the token expired
// while Identity is down) it returns an error wrapping upstream.ErrUnavailable, from which
// RetryAfter gives the time until the next attempt.
func (s *Source) Token(ctx context.Context) (string, error) {
	if t := s.cur.Load(); t != nil && s.o.Now().Before(t.sess.AccessExpiry) {
		return t.sess.AccessToken, nil
	}
	return s.tokenSlow(ctx)
}

func (s *Source) tokenSlow(ctx context.Context) (string, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return "", &unavailableError{retryAfter: time.Second, cause: ctx.Err()}
	}
	now := s.o.Now()
	if t := s.cur.Load(); t != nil && now.Before(t.sess.AccessExpiry) {
		return t.sess.AccessToken, nil
	}
	wait := time.Unix(0, s.next.Load()).Sub(now)
	return "", &unavailableError{retryAfter: max(wait, time.Second)}
}

// Invalidate is called when the upstream answered 401 to a request made with the token rejected.
// If the current token is no longer rejected it returns the current one. Otherwise it forces one
// refresh and returns the new token: concurrent callers share it, and so do instances sharing
// the store (when a peer has already replaced the token, its token is adopted without a fetch).
// It forces at most one refresh per ForceEvery, and never replaces a token fetched less than
// ForceEvery ago: then it returns ErrTooSoon, and the caller passes the 401 through.
func (s *Source) Invalidate(ctx context.Context, rejected string) (string, error) {
	if err := s.force(ctx, rejected); err != nil {
		return "", err
	}
	return s.Token(ctx)
}

// force replaces the token rejected, unless it has been replaced already.
func (s *Source) force(ctx context.Context, rejected string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	t := s.cur.Load()
	if t == nil || t.sess.AccessToken != rejected {
		return nil // replaced already, or no token yet (Token waits for it)
	}
	now := s.o.Now()
	if now.Sub(t.sess.LastSeen) < ForceEvery || now.Sub(s.lastForced) < ForceEvery {
		return ErrTooSoon
	}
	s.lastForced = now
	s.o.Logger.Info("service token rejected upstream; replacing it")
	if err := s.refresh(ctx, rejected); err != nil {
		return err
	}
	select { // the new token may have another expiry: let the loop reschedule
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// RetryAfter returns how long to wait before asking Token again after err, at least 1s; 0 when
// err is not Token's "no valid token" error.
func RetryAfter(err error) time.Duration {
	var ue *unavailableError
	if errors.As(err, &ue) {
		return ue.retryAfter
	}
	return 0
}

// unavailableError is Token's error when it has no valid token.
type unavailableError struct {
	retryAfter time.Duration
	cause      error // why waiting for the first token stopped, or nil
}

func (e *unavailableError) Error() string {
	msg := "no valid service token"
	if e.cause != nil {
		msg += " yet: " + e.cause.Error()
	}
	return fmt.Sprintf("%s: %s; retry in %s", upstream.ErrUnavailable, msg, e.retryAfter.Round(time.Second))
}

func (e *unavailableError) Unwrap() []error {
	if e.cause == nil {
		return []error{upstream.ErrUnavailable}
	}
	return []error{upstream.ErrUnavailable, e.cause}
}

// run is the background loop: an attempt, then a sleep until the token's refresh window (after a
// success) or a backoff (after a failure).
func (s *Source) run() {
	defer close(s.done)
	defer s.markReady()
	failures := 0
	for {
		err := s.tick(s.ctx)
		if s.ctx.Err() != nil {
			return
		}
		now := s.o.Now()
		var wait time.Duration
		if err != nil {
			failures++
			wait = s.backoff(failures)
			s.o.Logger.Debug("service token refresh failed; retrying", zap.Int("failures", failures),
				zap.Duration("retry_in", wait), zap.Error(err))
		} else {
			failures = 0
			wait = s.o.MinBackoff
			if t := s.cur.Load(); t != nil {
				wait = max(t.refreshAt.Sub(now), wait)
			}
		}
		s.next.Store(now.Add(wait).UnixNano())
		s.markReady()
		timer := time.NewTimer(wait)
		select {
		case <-s.ctx.Done():
			timer.Stop()
			return
		case <-s.wake:
			timer.Stop()
		case <-timer.C:
		}
	}
}

func (s *Source) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// backoff returns the delay after the nth consecutive failure: MinBackoff doubled n-1 times,
// capped at MaxBackoff, with jitter in its upper half, never below MinBackoff.
func (s *Source) backoff(n int) time.Duration {
	d := s.o.MinBackoff
	for i := 1; i < n && d < s.o.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.o.MaxBackoff)
	return max(d/2+rand.N(d/2+1), s.o.MinBackoff)
}

func (s *Source) lock(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Source) unlock() { <-s.sem }

// tick refreshes the token unless it is outside its refresh window (Invalidate may just have
// replaced it).
func (s *Source) tick(ctx context.Context) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	if t := s.cur.Load(); t != nil && s.o.Now().Before(t.refreshAt) {
		return nil
	}
	return s.refresh(ctx, "")
}

// refresh replaces the in-process token through the store, or, when the store is unavailable, by
// a fetch of this instance's own. rejected is the token Invalidate replaces ("" for a scheduled
// refresh): it is never adopted again. The caller holds sem.
func (s *Source) refresh(ctx context.Context, rejected string) error {
	err := s.refreshShared(ctx, rejected)
	if err == nil || !errors.Is(err, sessions.ErrUnavailable) || ctx.Err() != nil {
		return err
	}
	s.o.Logger.Warn("service token store unavailable; fetching without it", zap.Error(err))
	cur := &sessions.Session{ID: s.o.ID, Dialect: s.o.Dialect}
	if t := s.cur.Load(); t != nil {
		cur = t.sess
	}
	fctx, cancel := context.WithTimeout(ctx, s.o.Refresher.Timeout)
	defer cancel()
	next, err := s.fetch(fctx, cur)
	if err != nil {
		return err
	}
	s.adopt(next)
	return nil
}

// refreshShared adopts the stored token when it is usable, else refreshes the record through the
// Refresher, which fetches once across every caller and instance. Store failures wrap
// sessions.ErrUnavailable; fetch failures are Fetch's errors.
func (s *Source) refreshShared(ctx context.Context, rejected string) error {
	for range maxRounds {
		if s.known == nil {
			cur, err := s.load(ctx)
			if err != nil {
				return err
			}
			s.known = cur
			if s.valid(cur, rejected) {
				s.adopt(cur)
			}
			if s.usable(cur, rejected) {
				s.o.Logger.Debug("service token adopted from the store", zap.Time("expires", cur.AccessExpiry))
				return nil
			}
		}
		got, outcome, err := s.ref.Refresh(ctx, s.known, func(ctx context.Context, cur *sessions.Session) (*sessions.Session, error) {
			if s.usable(cur, rejected) {
				// Another record with our version (the store lost its data and a peer created it
				// again) that already holds a good token: keep it.
				return cur, nil
			}
			return s.fetch(ctx, cur)
		})
		switch {
		case err == nil:
		case got != nil:
			// Identity answered, but the store did not take the new tokens: serve them from this
			// process; the next refresh goes through the store again.
			s.o.Logger.Warn("service token fetched but not stored", zap.Error(err))
			s.adopt(got)
			return nil
		case errors.Is(err, sessions.ErrNotFound), errors.Is(err, sessions.ErrUnreadable):
			s.known = nil // gone, or sealed under other keys: load recreates it
			continue
		default:
			return err
		}
		s.known = got
		if s.valid(got, rejected) {
			s.adopt(got)
		}
		if outcome == sessions.Refreshed || s.usable(got, rejected) {
			s.o.Logger.Debug("service token refreshed", zap.String("outcome", string(outcome)),
				zap.Time("expires", got.AccessExpiry))
			return nil
		}
		// A peer's record no better than ours (a new empty record, or a token in its refresh
		// window): refresh that one.
	}
	return fmt.Errorf("%w: the stored service token keeps changing", sessions.ErrUnavailable)
}

// load returns the stored record, creating an empty one when there is none and replacing one that
// cannot be opened.
func (s *Source) load(ctx context.Context) (*sessions.Session, error) {
	for range maxRounds {
		cur, err := s.o.Store.Load(ctx, s.o.ID)
		switch {
		case err == nil:
			return cur, nil
		case errors.Is(err, sessions.ErrNotFound):
			cur = &sessions.Session{ID: s.o.ID, Dialect: s.o.Dialect}
			err = s.o.Store.Create(ctx, cur)
			if err == nil {
				return cur, nil
			}
			if !errors.Is(err, sessions.ErrConflict) { // a peer created it: load it
				return nil, err
			}
		case errors.Is(err, sessions.ErrUnreadable):
			if err := s.dropUnreadable(ctx); err != nil {
				return nil, err
			}
		default:
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: the stored service token keeps changing", sessions.ErrUnavailable)
}

// dropUnreadable deletes the stored record, under its lock, if it still cannot be opened.
func (s *Source) dropUnreadable(ctx context.Context) error {
	l, err := s.o.Store.TryLock(ctx, s.o.ID, s.o.Refresher.LockTTL)
	if errors.Is(err, sessions.ErrLocked) { // a peer is replacing it: look again shortly
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.o.Refresher.PollEvery):
			return nil
		}
	}
	if err != nil {
		return err
	}
	defer func() {
		if err := l.Release(context.WithoutCancel(ctx)); err != nil {
			s.o.Logger.Debug("releasing the service token lock", zap.Error(err))
		}
	}()
	if _, err := s.o.Store.Load(ctx, s.o.ID); !errors.Is(err, sessions.ErrUnreadable) {
		return nil // replaced meanwhile, or a store failure that the next load reports
	}
	s.o.Logger.Warn("stored service token cannot be opened (were the session keys changed?); replacing it")
	return s.o.Store.Delete(ctx, s.o.ID)
}

// fetch calls Fetch with the tokens of cur, reports the result, and returns a copy of cur holding
// the new tokens.
func (s *Source) fetch(ctx context.Context, cur *sessions.Session) (*sessions.Session, error) {
	var prev *upstream.Tokens
	if cur.AccessToken != "" || cur.RefreshToken != "" {
		prev = &upstream.Tokens{
			AccessToken: cur.AccessToken, AccessExpiry: cur.AccessExpiry,
			RefreshToken: cur.RefreshToken, RefreshExpiry: cur.RefreshExpiry,
			User: upstream.User{ID: cur.UserID},
		}
	}
	start := s.o.Now()
	t, err := s.o.Fetch(ctx, prev)
	now := s.o.Now()
	if err == nil && (t == nil || t.AccessToken == "" || !now.Before(t.AccessExpiry)) {
		err = fmt.Errorf("%w: the fetched service token is empty or already expired", upstream.ErrUnavailable)
	}
	switch {
	case err == nil:
	case errors.Is(err, upstream.ErrRejected):
		s.observeFetch("rejected")
		s.o.Logger.Error("service token fetch rejected; check the service credentials", zap.Error(err))
		return nil, err
	default:
		s.observeFetch("unavailable")
		s.o.Logger.Warn("service token fetch failed", zap.Error(err))
		return nil, err
	}
	s.observeFetch("ok")
	if prev != nil && s.o.Observer != nil {
		s.o.Observer.Replaced(now.Sub(cur.LastSeen))
	}
	s.o.Logger.Info("service token fetched", zap.Time("expires", t.AccessExpiry),
		zap.Duration("took", now.Sub(start)))
	next := *cur // Roles and Claims are shared, never modified
	next.ID, next.Dialect, next.UserID = s.o.ID, s.o.Dialect, t.User.ID
	next.AccessToken, next.AccessExpiry = t.AccessToken, t.AccessExpiry
	next.RefreshToken, next.RefreshExpiry = t.RefreshToken, t.RefreshExpiry
	next.LastSeen = now
	return &next, nil
}

func (s *Source) observeFetch(result string) {
	if s.o.Observer != nil {
		s.o.Observer.Fetched(result)
	}
}

// adopt makes sess's token the one Token serves.
func (s *Source) adopt(sess *sessions.Session) {
	s.cur.Store(&token{sess: sess, refreshAt: s.refreshAt(sess)})
}

// refreshAt returns the start of the refresh window of sess's token.
func (s *Source) refreshAt(sess *sessions.Session) time.Time {
	life := max(sess.AccessExpiry.Sub(sess.LastSeen), 0)
	window := min(max(s.o.RefreshBefore, life/10), life/2)
	return sess.AccessExpiry.Add(-window)
}

// valid reports whether sess holds a token, other than rejected, that has not expired.
func (s *Source) valid(sess *sessions.Session, rejected string) bool {
	return sess.AccessToken != "" && sess.AccessToken != rejected && s.o.Now().Before(sess.AccessExpiry)
}

// usable reports whether sess holds a valid token outside its refresh window.
func (s *Source) usable(sess *sessions.Session, rejected string) bool {
	return s.valid(sess, rejected) && s.o.Now().Before(s.refreshAt(sess))
}
