package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	maxDocumentSize = 1 << 20 // a key set or discovery document
	maxDrain        = 64 << 10
	minBackoff      = 250 * time.Millisecond
	maxBackoff      = time.Minute
)

var errClosed = errors.New("validator closed")

// source is one remote key set: a JWKS URL, or an issuer whose discovery document names one.
type source struct {
	discovery string // the issuer URL; empty for a plain JWKS URL

	mu       sync.Mutex
	jwksURL  string      // configured, or found by discovery
	keys     []verifyKey // the last good key set; replaced, never modified
	loaded   bool
	skipped  []string // the keys skipped at the last load, to log a change once
	inflight *fetch
}

// fetch is one load of a source; done is closed when err is set.
type fetch struct {
	done chan struct{}
	err  error
}

// keySet is an immutable snapshot of every key, published through Validator.keys.
type keySet struct {
	byKID map[string][]*verifyKey
	all   []*verifyKey // static keys first
	anon  []*verifyKey // static keys and JWKs without a kid
	ready bool         // every remote source has loaded once
	gen   uint64       // incremented when a key disappears
}

// candidates returns the keys to try for a token. A token without a kid may be signed by any
// key; one with a known kid by that kid's keys; one with an unknown kid (known false) by the
// keys without a kid. Only keys that accept alg are returned.
func (ks *keySet) candidates(kid string, hasKID bool, alg string) (keys []*verifyKey, known bool) {
	pool, known := ks.all, true
	if hasKID {
		if pool, known = ks.byKID[kid]; !known {
			pool = ks.anon
		}
	}
	for _, k := range pool {
		if k.accepts(alg) {
			keys = append(keys, k)
		}
	}
	return keys, known
}

// rebuildKeys publishes a new snapshot of the static keys and the sources' last good keys.
func (v *Validator) rebuildKeys() {
	v.keysMu.Lock()
	defer v.keysMu.Unlock()
	ks := &keySet{byKID: map[string][]*verifyKey{}, ready: true}
	add := func(k *verifyKey) {
		ks.all = append(ks.all, k)
		if k.kid == "" {
			ks.anon = append(ks.anon, k)
		} else {
			ks.byKID[k.kid] = append(ks.byKID[k.kid], k)
		}
	}
	for i := range v.static {
		add(&v.static[i])
	}
	for _, s := range v.sources {
		s.mu.Lock()
		keys, loaded := s.keys, s.loaded
		s.mu.Unlock()
		ks.ready = ks.ready && loaded
		for i := range keys {
			add(&keys[i])
		}
	}
	if old := v.keys.Load(); old != nil {
		ks.gen = old.gen
		ids := make(map[string]bool, len(ks.all))
		for _, k := range ks.all {
			ids[k.id] = true
		}
		if slices.ContainsFunc(old.all, func(k *verifyKey) bool { return !ids[k.id] }) {
			ks.gen++
		}
	}
	v.keys.Store(ks)
}

// run loads s, then refreshes it every RefreshInterval; failures retry with jittered
// exponential backoff. The last good keys stay in use meanwhile.
func (v *Validator) run(s *source) {
	backoff := minBackoff
	for {
		f := v.fetchSource(s)
		select {
		case <-f.done:
		case <-v.ctx.Done():
			return
		}
		wait := v.cfg.RefreshInterval
		if f.err != nil {
			wait = min(time.Duration(float64(backoff)*(0.8+0.4*rand.Float64())), wait)
			backoff = min(2*backoff, maxBackoff)
		} else {
			backoff = minBackoff
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-v.ctx.Done():
			t.Stop()
			return
		}
	}
}

// fetchSource starts a load of s, or joins the one in flight.
func (v *Validator) fetchSource(s *source) *fetch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight != nil {
		return s.inflight
	}
	f := &fetch{done: make(chan struct{})}
	if !v.goTracked(func() {
		f.err = v.load(s)
		s.mu.Lock()
		s.inflight = nil
		s.mu.Unlock()
		close(f.done)
	}) {
		f.err = errClosed
		close(f.done)
		return f
	}
	s.inflight = f
	return f
}

// refetchKeys reloads every source for a token with an unknown kid, at most once per
// UnknownKIDInterval. A caller waits only for a refetch it started or one in flight, and at
// most until ctx ends; a rate-limited caller does not wait at all. It reports whether this
// caller started the refetch and whether it waited for one to finish.
func (v *Validator) refetchKeys(ctx context.Context) (started, waited bool) {
	v.refetchMu.Lock()
	done := v.refetch
	if done == nil {
		now := v.now()
		if d := now.Sub(v.lastRefetch); !v.lastRefetch.IsZero() && d >= 0 && d < v.cfg.UnknownKIDInterval {
			v.refetchMu.Unlock()
			return false, false
		}
		fetches := make([]*fetch, len(v.sources))
		for i, s := range v.sources {
			fetches[i] = v.fetchSource(s)
		}
		ch := make(chan struct{})
		if !v.goTracked(func() {
			for _, f := range fetches {
				<-f.done
			}
			v.refetchMu.Lock()
			v.refetch = nil
			v.refetchMu.Unlock()
			close(ch)
		}) {
			v.refetchMu.Unlock()
			return false, false
		}
		v.lastRefetch = now
		v.refetch, done, started = ch, ch, true
	}
	v.refetchMu.Unlock()
	select {
	case <-done:
		return started, true
	case <-ctx.Done():
		return started, false
	}
}

// load fetches s once (its discovery document first, until that has answered) and publishes
// its keys. Failures are logged at Warn and keep the last good keys.
func (v *Validator) load(s *source) error {
	s.mu.Lock()
	jwksURL := s.jwksURL
	s.mu.Unlock()
	if jwksURL == "" {
		u, err := v.discover(s.discovery)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.jwksURL, jwksURL = u, u
		s.mu.Unlock()
	}
	var keys []verifyKey
	var skipped []string
	body, err := v.get(jwksURL)
	if err == nil {
		keys, skipped, err = parseJWKS(body)
	}
	if v.failed(jwksURL, err) {
		return err
	}
	s.mu.Lock()
	first, skipChanged := !s.loaded, !slices.Equal(s.skipped, skipped)
	s.keys, s.loaded, s.skipped = keys, true, skipped
	s.mu.Unlock()
	v.rebuildKeys()
	if first {
		v.log.Info("jwks loaded", zap.String("url", jwksURL), zap.Int("keys", len(keys)))
	}
	if skipChanged && len(skipped) > 0 {
		v.log.Warn("jwks keys skipped", zap.String("url", jwksURL), zap.Strings("skipped", skipped))
	}
	return nil
}

// discover reads the jwks_uri of an issuer's discovery document.
func (v *Validator) discover(issuer string) (string, error) {
	u := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	body, err := v.get(u)
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err == nil && json.Unmarshal(body, &doc) != nil {
		err = errors.New("discovery document is not a JSON object")
	}
	if err == nil && strings.TrimSuffix(doc.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
		err = fmt.Errorf("discovery document names issuer %q, want %q", doc.Issuer, issuer)
	}
	if err == nil {
		if e := checkURL(doc.JWKSURI); e != nil {
			err = fmt.Errorf("discovery document jwks_uri: %w", e)
		}
	}
	if v.failed(u, err) {
		return "", err
	}
	return doc.JWKSURI, nil
}

// failed reports a fetch of url to the observer and logs a failure. It reports err != nil.
// Failures caused by Close are neither.
func (v *Validator) failed(url string, err error) bool {
	if err != nil && v.ctx.Err() != nil {
		return true
	}
	if err != nil {
		v.obs.JWKSFetch("error")
		v.log.Warn("jwks refresh failed", zap.String("url", url), zap.Error(err))
		return true
	}
	v.obs.JWKSFetch("ok")
	return false
}

// get fetches a JSON document of at most 1 MiB.
func (v *Validator) get(url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(v.ctx, v.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("unexpected status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading body: %w", err)
	}
	if len(b) > maxDocumentSize {
		return nil, errors.New("document exceeds 1 MiB")
	}
	return b, nil
}

// drainClose reads what is left of a body, up to 64 KiB so the connection can be reused, and
// closes it.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrain))
	_ = body.Close()
}
