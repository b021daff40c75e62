package tokens

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestCacheHit: a second validation is a cache hit that skips signature verification. Entries
// are keyed by the hash of the header and payload, since ECDSA signatures are malleable ((r, s) and
// (r, n-s) both verify) and one token would otherwise occupy several entries; a hit also needs the
// signature that was verified, so the cached content with a cut or altered signature (a token
// "redacted" in a log, say) is verified again and refused.
func TestCacheHit(t *testing.T) {
	clk := newClock()
	rec := newRecorder()
	keys := newKeyServer(t, jwkOf("ec1", "ES256", &ecKey().PublicKey))
	v := newValidator(t, Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}, Now: clk.Now, Observer: rec})
	tok := sign(t, jwt.SigningMethodES256, ecKey(), map[string]any{"kid": "ec1"}, claims(clk.Now()))
	first, err := validate(v, tok)
	wantErr(t, err, nil)
	second, err := validate(v, tok)
	wantErr(t, err, nil)
	if second != first || rec.count("validation.ok") != 1 || rec.count("validation.cache_hit") != 1 {
		t.Fatalf("second validation: same identity %v, events %v", second == first, rec.events)
	}
	// The cached content with another signature is verified again, and fails: a token whose
	// signature was cut or altered is worth nothing, cached or not.
	_, err = validate(v, tamper(tok))
	wantErr(t, err, ErrInvalid)
	if rec.count("validation.cache_hit") != 1 {
		t.Fatal("a cached token with another signature was served from the cache")
	}
	// And the genuine token still validates.
	if again, err := validate(v, tok); err != nil || again.Subject != first.Subject {
		t.Fatalf("the genuine token after a tampered one: %v", err)
	}
	// Another payload with the cached token's signature is verified, and fails.
	_, _, s := splitParts(tok)
	h, p, _ := splitParts(sign(t, jwt.SigningMethodES256, ecKey(), map[string]any{"kid": "ec1"}, claims(clk.Now(), "sub", "admin")))
	_, err = validate(v, h+"."+p+"."+s)
	wantErr(t, err, ErrInvalid)
	// A malformed signature segment is still refused before the cache.
	h, p, s = splitParts(tok)
	_, err = validate(v, h+"."+p+"."+s+"=")
	wantErr(t, err, ErrInvalid)
}

// TestCacheExpiry: an entry is never used at or past the token's exp, leeway notwithstanding.
func TestCacheExpiry(t *testing.T) {
	clk := newClock()
	rec := newRecorder()
	keys := newKeyServer(t, jwkOf("rsa1", "", &rsaKey().PublicKey))
	v := newValidator(t, Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}, Now: clk.Now, Observer: rec})
	now := clk.Now()
	exp := now.Add(2 * time.Minute)
	tok := sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "rsa1"}, claims(now, "exp", exp.Unix()))
	for range 2 {
		_, err := validate(v, tok)
		wantErr(t, err, nil)
	}
	clk.Advance(exp.Truncate(time.Second).Sub(now)) // exactly exp
	_, err := validate(v, tok)
	wantErr(t, err, nil) // within leeway, verified again, not cached
	if rec.count("validation.cache_hit") != 1 || rec.count("validation.ok") != 2 {
		t.Fatalf("events %v", rec.events)
	}
	clk.Advance(DefaultLeeway)
	_, err = validate(v, tok)
	wantErr(t, err, ErrExpired)
}

// TestCacheKeyWithdrawn: a refresh that removes a key ends the cached verifications at once.
func TestCacheKeyWithdrawn(t *testing.T) {
	rec := newRecorder()
	keys := newKeyServer(t, jwkOf("old", "", &rsaKey().PublicKey), jwkOf("ed1", "", edKey().Public()))
	v := newValidator(t, Config{
		Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL},
		RefreshInterval: 10 * time.Millisecond, UnknownKIDInterval: time.Hour, Observer: rec,
	})
	now := time.Now()
	old := sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "old"}, claims(now))
	kept := sign(t, jwt.SigningMethodEdDSA, edKey(), map[string]any{"kid": "ed1"}, claims(now))
	for _, tok := range []string{old, kept} {
		_, err := validate(v, tok)
		wantErr(t, err, nil)
	}
	// A refresh that adds a key keeps the cache.
	keys.setKeys(jwkOf("old", "", &rsaKey().PublicKey), jwkOf("ed1", "", edKey().Public()), jwkOf("new", "", &rsaKeys()[1].PublicKey))
	n := rec.count("jwks.ok")
	waitFor(t, "a refresh", func() bool { return rec.count("jwks.ok") >= n+2 })
	_, err := validate(v, old)
	wantErr(t, err, nil)
	if rec.count("validation.cache_hit") != 1 {
		t.Fatalf("adding a key dropped the cache: %v", rec.events)
	}
	keys.setKeys(jwkOf("ed1", "", edKey().Public()), jwkOf("new", "", &rsaKeys()[1].PublicKey))
	n = rec.count("jwks.ok")
	waitFor(t, "a refresh", func() bool { return rec.count("jwks.ok") >= n+2 })
	_, err = validate(v, old)
	wantErr(t, err, ErrInvalid)
	_, err = validate(v, kept)
	wantErr(t, err, nil)
}

// TestCacheBounded: the cache holds at most CacheSize entries, dropping expired ones first.
func TestCacheBounded(t *testing.T) {
	keys := newKeyServer(t, jwkOf("ed1", "", edKey().Public()))
	v := newValidator(t, Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}, CacheSize: 3})
	for i := range 10 {
		_, err := validate(v, sign(t, jwt.SigningMethodEdDSA, edKey(), nil, claims(time.Now(), "jti", fmt.Sprint(i))))
		wantErr(t, err, nil)
		if n := v.verified.len(); n > 3 {
			t.Fatalf("%d entries in a cache of 3", n)
		}
	}

	c := newCache[int](2)
	t0 := time.Now()
	k := func(s string) [32]byte { return sha256.Sum256([]byte(s)) }
	c.put(k("short"), 1, t0.Add(time.Second), t0)
	c.put(k("long"), 2, t0.Add(time.Hour), t0)
	c.put(k("dead"), 0, t0, t0) // already expired: not stored
	t1 := t0.Add(2 * time.Second)
	if _, ok := c.get(k("short"), t1); ok {
		t.Fatal("an expired entry was returned")
	}
	c.put(k("new"), 3, t1.Add(time.Hour), t1)
	if _, ok := c.get(k("long"), t1); !ok || c.len() != 2 {
		t.Fatal("a live entry was evicted while an expired one was there")
	}
	c.put(k("newer"), 4, t1.Add(time.Hour), t1)
	if v, ok := c.get(k("newer"), t1); !ok || v != 4 || c.len() != 2 {
		t.Fatalf("full cache: len %d", c.len())
	}
}
