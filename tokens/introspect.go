package tokens

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// introspector checks tokens at an identity endpoint, caching its answers.
type introspector struct {
	url             string
	header          http.Header
	maxTTL, failTTL time.Duration
	sem             chan struct{}     // one slot per call in flight
	cache           *cache[*Identity] // nil: refused

	mu      sync.Mutex
	flights map[[32]byte]*introFlight
}

// introFlight is one introspection call; done is closed when id and err are set.
type introFlight struct {
	done chan struct{}
	id   *Identity
	err  error
}

func newIntrospector(c Introspection, cacheSize int) (*introspector, error) {
	if err := checkURL(c.URL); err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if c.MaxTTL < 0 || c.FailureTTL < 0 || c.MaxConcurrent < 0 {
		return nil, errors.New("max ttl, failure ttl and max concurrent must not be negative")
	}
	h := http.Header{}
	for k, vs := range c.Header {
		for _, s := range vs {
			h.Add(k, s)
		}
	}
	if h.Get("Authorization") != "" {
		return nil, errors.New("header must not set Authorization: it carries the token")
	}
	return &introspector{
		url:     c.URL,
		header:  h,
		maxTTL:  cmp.Or(c.MaxTTL, DefaultIntrospectionTTL),
		failTTL: cmp.Or(c.FailureTTL, DefaultFailureTTL),
		sem:     make(chan struct{}, cmp.Or(c.MaxConcurrent, DefaultMaxConcurrent)),
		cache:   newCache[*Identity](cacheSize),
		flights: map[[32]byte]*introFlight{},
	}, nil
}

// errRefused is the answer of an introspection endpoint that refused the token.
var errRefused error = &reasonError{ErrInvalid, "refused by introspection"}

// introspect checks a token that cannot be verified locally. claims is its unverified payload.
// Concurrent requests with the same token share one call.
func (v *Validator) introspect(ctx context.Context, raw string, claims map[string]any, now time.Time) (*Identity, string, error) {
	exp, ok := numericDate(claims["exp"])
	if !ok {
		return nil, "", invalid("exp claim missing or malformed")
	}
	if !now.Before(exp) {
		return nil, "", expired("exp is in the past")
	}
	in := v.intro
	key := v.introKey(raw)
	if id, ok := in.cache.get(key, now); ok {
		v.obs.Introspection("cache_hit")
		if id == nil {
			return nil, "", errRefused
		}
		return id, "cache_hit", nil
	}
	in.mu.Lock()
	f := in.flights[key]
	if f == nil {
		select {
		case in.sem <- struct{}{}:
		default:
			in.mu.Unlock()
			v.obs.Introspection("unavailable")
			return nil, "", unavailable("too many concurrent introspection calls")
		}
		f = &introFlight{done: make(chan struct{})}
		id := &Identity{Subject: subject(claims), Claims: claims, Expiry: exp, Introspected: true}
		if !v.goTracked(func() {
			f.id, f.err = v.callIntrospection(raw, key, id)
			<-in.sem
			in.mu.Lock()
			delete(in.flights, key) // after the answer is cached: no second call slips in
			in.mu.Unlock()
			close(f.done)
		}) {
			<-in.sem
			in.mu.Unlock()
			return nil, "", unavailable("validator closed")
		}
		in.flights[key] = f
	}
	in.mu.Unlock()
	select {
	case <-f.done:
		return f.id, "", f.err
	case <-ctx.Done():
		return nil, "", unavailable("request ended before introspection answered")
	}
}

// introKey is the cache key of raw: SHA-256 of the URL, a NUL byte and the token.
func (v *Validator) introKey(raw string) (key [32]byte) {
	h := sha256.New()
	_, _ = io.WriteString(h, v.intro.url)
	_, _ = h.Write([]byte{0})
	_, _ = io.WriteString(h, raw)
	h.Sum(key[:0])
	return key
}

// callIntrospection asks the endpoint about raw and caches a valid or refused answer under key.
func (v *Validator) callIntrospection(raw string, key [32]byte, id *Identity) (*Identity, error) {
	in := v.intro
	ctx, cancel := context.WithTimeout(v.ctx, v.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, in.url, nil)
	if err != nil {
		v.obs.Introspection("unavailable")
		return nil, unavailable("introspection request could not be built")
	}
	for k, vs := range in.header {
		req.Header[k] = vs
	}
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := v.client.Do(req)
	if err != nil {
		v.obs.Introspection("unavailable")
		if c := v.log.Check(zap.DebugLevel, "introspection failed"); c != nil {
			c.Write(zap.Error(err)) // a *url.Error: the configured URL, never a header
		}
		return nil, unavailable("introspection call failed")
	}
	drainClose(resp.Body)
	now := v.now()
	switch resp.StatusCode {
	case http.StatusOK:
		v.obs.Introspection("valid")
		until := now.Add(in.maxTTL)
		if id.Expiry.Before(until) {
			until = id.Expiry
		}
		in.cache.put(key, id, until, now)
		return id, nil
	case http.StatusUnauthorized, http.StatusForbidden:
		v.obs.Introspection("invalid")
		in.cache.put(key, nil, now.Add(in.failTTL), now)
		return nil, errRefused
	}
	v.obs.Introspection("unavailable")
	return nil, unavailable(fmt.Sprintf("introspection answered %d", resp.StatusCode))
}
