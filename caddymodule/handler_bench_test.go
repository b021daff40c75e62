package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golang-jwt/jwt/v5"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/upstream/emulator"
)

// BenchmarkServeHTTP measures what the gateway adds to a request on the bearer path with a warm
// cache: the strip, the cached validation, x-site-context and an identity header. bench/run.sh
// measures the same path under load against a bare reverse_proxy.
func BenchmarkServeHTTP(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pemFile := filepath.Join(b.TempDir(), "key.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		b.Fatal(err)
	}
	token, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": "https://idp.test", "aud": "api://default", "sub": "bench-user",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		"accountid": "5f689caa4216e7000750d1ef",
	}).SignedString(key)

	h := &Handler{
		Issuer: "https://idp.test", Audiences: []string{"api://default"}, PublicKeyFiles: []string{pemFile},
		SiteContext:     &SiteContext{Channel: 12, Stage: "production"},
		IdentityHeaders: map[string]string{"X-User-Id": "{http.auth.user.id}"},
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	r0 := httptest.NewRequest("GET", "/orders", nil)
	r0.Header.Set("Authorization", "Bearer "+token)
	r0.Header.Set("Accept", "application/json")
	r0.Header.Set("User-Agent", "bench")

	b.ReportAllocs()
	for b.Loop() {
		// A fresh replacer and header map per request, as a server makes.
		r := r0.WithContext(context.WithValue(r0.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		r.Header = r0.Header.Clone()
		if err := h.ServeHTTP(w, r, next); err != nil || r.Header.Get("X-User-Id") != "bench-user" {
			b.Fatalf("ServeHTTP: %v, %v", err, r.Header)
		}
	}
}

// BenchmarkServeSession measures the session path on the memory store: the cookie, the load
// (decoding and opening the sealed tokens), x-site-context, an identity header and the
// response wrapper. bench/run.sh measures it on Redis under load.
func BenchmarkServeSession(b *testing.B) {
	h := &Handler{
		Identity:        &Identity{Dialect: "fabric_v1", URL: "http://127.0.0.1:1"},
		SiteContext:     &SiteContext{Account: "5f689caa4216e7000750d1ef", Channel: 12, Stage: "production"},
		IdentityHeaders: map[string]string{"X-User-Id": "{http.auth.user.id}"},
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	s := &sessions.Session{
		UserID: "bench-user", Account: "5f689caa4216e7000750d1ef", Dialect: "fabric_v1", Roles: []string{"customer"},
		AccessToken: strings.Repeat("a", 900), AccessExpiry: time.Now().Add(time.Hour),
		RefreshToken: strings.Repeat("r", 300),
	}
	if err := h.gate.backend.store.Create(context.Background(), s); err != nil {
		b.Fatal(err)
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	r0 := httptest.NewRequest("GET", "/orders", nil)
	r0.Header.Set("Cookie", "theme=dark; __Host-sitegate="+s.ID)
	r0.Header.Set("Accept", "application/json")

	b.ReportAllocs()
	for b.Loop() {
		r := r0.WithContext(context.WithValue(r0.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		r.Header = r0.Header.Clone()
		if err := h.ServeHTTP(w, r, next); err != nil || r.Header.Get("X-User-Id") != "bench-user" {
			b.Fatalf("ServeHTTP: %v, %v", err, r.Header)
		}
	}
}

// BenchmarkServeService measures the sidecar once its token is fetched: the strip, the token's
// atomic read, Authorization and x-site-context, and the response wrapper that holds a 401 for
// the replay. bench/run.sh measures it under load against a bare reverse_proxy.
func BenchmarkServeService(b *testing.B) {
	emu, err := emulator.New(emulator.Config{Clients: []emulator.Client{{ID: "bench-app", Secret: "bench-secret"}}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	idp := httptest.NewServer(emu)
	defer idp.Close()
	s := &Service{
		Identity:    &Identity{Dialect: "oauth2", URL: idp.URL + "/oauth2/ausbench", ClientID: "bench-app", ClientSecret: "bench-secret"},
		SiteContext: &SiteContext{Account: "5f689caa4216e7000750d1ef", Channel: 12, Stage: "production"},
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer s.Cleanup()
	if _, err := s.source.Token(context.Background()); err != nil {
		b.Fatal(err)
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	r0 := httptest.NewRequest("GET", "/api-product/v1/product", nil)
	r0.Header.Set("Accept", "application/json")
	r0.Header.Set("User-Agent", "bench")

	b.ReportAllocs()
	for b.Loop() {
		r := r0.WithContext(context.WithValue(r0.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		r.Header = r0.Header.Clone()
		if err := s.ServeHTTP(w, r, next); err != nil || !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer eyJ") {
			b.Fatalf("ServeHTTP: %v, %v", err, r.Header)
		}
	}
}
