package tokens

import (
	"context"
	"crypto"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// benchValidator verifies RS256 tokens with a static key: no network.
func benchValidator(b *testing.B) (*Validator, string) {
	b.Helper()
	v, err := New(Config{Issuer: testIssuer, Audiences: []string{testAudience}, PublicKeys: []crypto.PublicKey{&rsaKey().PublicKey}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(v.Close)
	now := time.Now()
	tok := sign(b, jwt.SigningMethodRS256, rsaKey(), nil, claims(now, "exp", now.Add(time.Hour).Unix(),
		"scp", []string{"openid", "profile"}, "accountId", testAccount, "roles", []string{"admin", "customer"}))
	if _, err := v.Validate(context.Background(), tok); err != nil {
		b.Fatal(err)
	}
	return v, tok
}

// BenchmarkValidateCached validates a token that is in the cache: no signature verification.
func BenchmarkValidateCached(b *testing.B) {
	v, tok := benchValidator(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Validate(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidateCachedParallel is BenchmarkValidateCached from every CPU.
func BenchmarkValidateCachedParallel(b *testing.B) {
	v, tok := benchValidator(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Validate(ctx, tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkValidateRS256Uncached parses and verifies every time (the cache is emptied before
// each validation).
func BenchmarkValidateRS256Uncached(b *testing.B) {
	v, tok := benchValidator(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		v.verified = newCache[verifiedEntry](1)
		if _, err := v.Validate(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
