package tokens

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// introConfig introspects at the emulator's /ums/v2/users/self.
func introConfig(e *emu, clk *clock, rec *recorder, f func(*Introspection)) Config {
	in := &Introspection{URL: e.URL + "/ums/v2/users/self"}
	if f != nil {
		f(in)
	}
	return Config{Introspection: in, Now: clk.Now, Observer: rec}
}

func TestIntrospectValid(t *testing.T) {
	e := newEmu(t)
	clk, rec := newClock(), newRecorder()
	v := newValidator(t, introConfig(e, clk, rec, nil))
	tok := e.v1Token()
	var first *Identity
	for i := range 10 {
		id, err := validate(v, tok)
		wantErr(t, err, nil)
		if i == 0 {
			first = id
		} else if id != first {
			t.Fatal("a cached answer gave another identity")
		}
	}
	if !first.Introspected || first.Subject == "" || first.Subject != first.Claims["id"] || first.Claims["accountid"] != testAccount || first.Expiry.IsZero() {
		t.Fatalf("identity = %+v", first)
	}
	if n := e.calls("ums.get_self"); n != 1 {
		t.Fatalf("ums.get_self called %d times for 10 validations", n)
	}
	if rec.count("introspection.valid") != 1 || rec.count("introspection.cache_hit") != 9 || rec.count("validation.ok") != 1 || rec.count("validation.cache_hit") != 9 {
		t.Fatalf("events %v", rec.events)
	}

	// MaxTTL ends the cached answer.
	clk.Advance(DefaultIntrospectionTTL)
	_, err := validate(v, tok)
	wantErr(t, err, nil)
	if n := e.calls("ums.get_self"); n != 2 {
		t.Fatalf("ums.get_self called %d times after MaxTTL, want 2", n)
	}
	// The token's exp ends it too, and an expired token is not sent.
	clk.Advance(time.Until(first.Expiry))
	_, err = validate(v, tok)
	wantErr(t, err, ErrExpired)
	if n := e.calls("ums.get_self"); n != 2 {
		t.Fatalf("an expired token was introspected")
	}
}

// TestIntrospectCacheCappedByExp: a valid answer is cached no longer than the token's exp.
func TestIntrospectCacheCappedByExp(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	clk := newClock()
	v := newValidator(t, Config{Introspection: &Introspection{URL: srv.URL, MaxTTL: time.Hour}, Now: clk.Now})
	exp := clk.Now().Add(time.Minute).Truncate(time.Second)
	tok := rawToken(map[string]any{"alg": "RS256"}, map[string]any{"id": "u1", "exp": exp.Unix()}, "c2ln")
	id, err := validate(v, tok)
	wantErr(t, err, nil)
	if !id.Expiry.Equal(exp) || id.Subject != "u1" {
		t.Fatalf("identity = %+v", id)
	}
	key := v.introKey(tok)
	if _, ok := v.intro.cache.get(key, exp.Add(-time.Millisecond)); !ok {
		t.Fatal("not cached until exp")
	}
	if _, ok := v.intro.cache.get(key, exp); ok {
		t.Fatal("cached past exp")
	}
}

func TestIntrospectInvalid(t *testing.T) {
	e := newEmu(t)
	clk, rec := newClock(), newRecorder()
	v := newValidator(t, introConfig(e, clk, rec, nil))
	tok := e.v1Token()
	e.fault(`{"endpoint":"ums.get_self","reject":true}`)
	for range 3 {
		_, err := validate(v, tok)
		wantErr(t, err, ErrInvalid)
	}
	if n := e.calls("ums.get_self"); n != 1 {
		t.Fatalf("ums.get_self called %d times, want 1 (cached refusal)", n)
	}
	e.clearFaults()
	clk.Advance(DefaultFailureTTL)
	_, err := validate(v, tok)
	wantErr(t, err, nil)
	if n := e.calls("ums.get_self"); n != 2 {
		t.Fatalf("ums.get_self called %d times after FailureTTL, want 2", n)
	}
	if rec.count("introspection.invalid") != 1 || rec.count("introspection.cache_hit") != 2 || rec.count("validation.invalid") != 3 {
		t.Fatalf("events %v", rec.events)
	}

	// 403: the emulator forbids a client_credentials token at /users/self. With no local keys
	// configured, the OAuth2 token is introspected.
	_, err = validate(v, e.clientToken())
	wantErr(t, err, ErrInvalid)
	if n := e.calls("ums.get_self"); n != 3 {
		t.Fatalf("ums.get_self called %d times, want 3", n)
	}
}

func TestIntrospectUnavailable(t *testing.T) {
	e := newEmu(t)
	clk, rec := newClock(), newRecorder()
	v := newValidator(t, Config{
		Introspection: &Introspection{URL: e.URL + "/ums/v2/users/self"},
		HTTPClient:    &http.Client{Timeout: 200 * time.Millisecond},
		Now:           clk.Now, Observer: rec,
	})
	tok := e.v1Token()
	for _, fault := range []string{
		`{"endpoint":"ums.get_self","status":503}`,
		`{"endpoint":"ums.get_self","status":500}`,
		`{"endpoint":"ums.get_self","status":429}`,
		`{"endpoint":"ums.get_self","drop":true}`,
		`{"endpoint":"ums.get_self","latency":"2s"}`,
	} {
		e.fault(fault)
		start := time.Now()
		for range 2 {
			_, err := validate(v, tok)
			wantErr(t, err, ErrUnavailable)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("%s: took %s", fault, d)
		}
		e.clearFaults()
	}
	// At least 10: Go's transport may retry a GET whose reused connection was dropped.
	if n := e.calls("ums.get_self"); n < 10 {
		t.Fatalf("ums.get_self called %d times, want 10: unavailable answers are not cached", n)
	}
	if rec.count("introspection.unavailable") != 10 || rec.count("validation.unavailable") != 10 {
		t.Fatalf("events %v", rec.events)
	}
	_, err := validate(v, tok)
	wantErr(t, err, nil)
}

// TestIntrospectNotSent: tokens that are malformed, without exp or expired never reach the
// endpoint.
func TestIntrospectNotSent(t *testing.T) {
	e := newEmu(t)
	clk, rec := newClock(), newRecorder()
	v := newValidator(t, introConfig(e, clk, rec, nil))
	tok := e.v1Token()
	now := clk.Now()
	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"not a JWT", "opaque-token", ErrInvalid},
		{"payload not JSON", "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln", ErrInvalid},
		{"payload with trailing data", enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"exp":9999999999}]`)) + ".c2ln", ErrInvalid},
		{"no exp", rawToken(map[string]any{"alg": "RS256"}, map[string]any{"id": "x"}, "c2ln"), ErrInvalid},
		{"exp a string", rawToken(map[string]any{"alg": "RS256"}, map[string]any{"exp": "soon"}, "c2ln"), ErrInvalid},
		{"expired", rawToken(map[string]any{"alg": "RS256"}, map[string]any{"exp": now.Add(-time.Second).Unix()}, "c2ln"), ErrExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := validate(v, tc.token)
			wantErr(t, err, tc.want)
		})
	}
	clk.Advance(31 * time.Minute) // past the emulator's 30m access lifetime
	_, err := validate(v, tok)
	wantErr(t, err, ErrExpired)
	if n := e.calls("ums.get_self"); n != 0 {
		t.Fatalf("ums.get_self called %d times", n)
	}
}

// TestIntrospectSingleFlight: concurrent validations of one token share one call.
func TestIntrospectSingleFlight(t *testing.T) {
	e := newEmu(t)
	v := newValidator(t, introConfig(e, newClock(), newRecorder(), nil))
	tok := e.v1Token()
	e.fault(`{"endpoint":"ums.get_self","latency":"200ms"}`)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := validate(v, tok)
			wantErr(t, err, nil)
		})
	}
	wg.Wait()
	if n := e.calls("ums.get_self"); n != 1 {
		t.Fatalf("ums.get_self called %d times for 20 concurrent validations", n)
	}
}

// TestIntrospectConcurrencyCap: beyond MaxConcurrent calls in flight, Validate answers
// ErrUnavailable without calling.
func TestIntrospectConcurrencyCap(t *testing.T) {
	e := newEmu(t)
	rec := newRecorder()
	v := newValidator(t, introConfig(e, newClock(), rec, func(in *Introspection) { in.MaxConcurrent = 1 }))
	a, b := e.v1Token(), e.v1Token()
	e.fault(`{"endpoint":"ums.get_self","latency":"300ms"}`)
	done := make(chan error)
	go func() {
		_, err := validate(v, a)
		done <- err
	}()
	waitFor(t, "the first call", func() bool { return e.calls("ums.get_self") == 1 })
	start := time.Now()
	_, err := validate(v, b)
	wantErr(t, err, ErrUnavailable)
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("a capped validation waited %s", d)
	}
	wantErr(t, <-done, nil)
	if n := e.calls("ums.get_self"); n != 1 || rec.count("introspection.unavailable") != 1 {
		t.Fatalf("ums.get_self called %d times, events %v", n, rec.events)
	}
	_, err = validate(v, b)
	wantErr(t, err, nil)
}

// TestIntrospectRequest: the call carries the configured headers and the bearer token, and a
// large answer body is not read past 64 KiB.
func TestIntrospectRequest(t *testing.T) {
	var got http.Header
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.Header.Clone()
		mu.Unlock()
		_, _ = w.Write([]byte(strings.Repeat("x", 4<<20)))
	}))
	defer srv.Close()
	v := newValidator(t, Config{Introspection: &Introspection{
		URL: srv.URL + "/self",
		Header: http.Header{
			"x-api-key":      {"the-api-key"}, // not canonical: canonicalised
			"X-Site-Context": {`{"account":"` + testAccount + `"}`},
		},
	}})
	tok := rawToken(map[string]any{"alg": "RS256"}, map[string]any{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()}, "c2ln")
	_, err := validate(v, tok)
	wantErr(t, err, nil)
	mu.Lock()
	defer mu.Unlock()
	if got.Get("Authorization") != "Bearer "+tok || got.Get("X-Api-Key") != "the-api-key" || got.Get("X-Site-Context") == "" {
		t.Fatalf("headers %v", got)
	}
}

// TestLocalAndIntrospection: tokens of the configured issuer are verified locally, the others
// introspected; a token of our issuer is never introspected, even when its key is unknown.
func TestLocalAndIntrospection(t *testing.T) {
	e := newEmu(t)
	v := newValidator(t, emulatorConfig(e, func(c *Config) {
		c.Introspection = &Introspection{URL: e.URL + "/ums/v2/users/self"}
	}))
	id, err := validate(v, e.clientToken())
	wantErr(t, err, nil)
	if id.Introspected {
		t.Fatal("a local token was introspected")
	}
	id, err = validate(v, e.v1Token())
	wantErr(t, err, nil)
	if !id.Introspected {
		t.Fatal("a v1 token was not introspected")
	}
	_, err = validate(v, sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "x"}, claims(time.Now(), "iss", e.issuer())))
	wantErr(t, err, ErrInvalid)
	if n := e.calls("ums.get_self"); n != 1 {
		t.Fatalf("ums.get_self called %d times, want 1", n)
	}
}
