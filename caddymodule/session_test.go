package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sitegate/sitegate/internal/redistest"
	"github.com/sitegate/sitegate/sessions"
)

func TestTakeCookie(t *testing.T) {
	const name = "__Host-sitegate"
	for _, tc := range []struct {
		name     string
		in, out  []string
		value    string
		conflict bool
	}{
		{"none", nil, nil, "", false},
		{"others only", []string{"a=1; b=2"}, []string{"a=1; b=2"}, "", false},
		{"alone", []string{name + "=sid"}, nil, "sid", false},
		{"among others", []string{"a=1; " + name + "=sid; b=2"}, []string{"a=1; b=2"}, "sid", false},
		{"quoted", []string{name + `="sid"`}, nil, "sid", false},
		{"in a second header", []string{"a=1", name + "=sid;b=2"}, []string{"a=1", "b=2"}, "sid", false},
		{"same twice", []string{name + "=sid; " + name + "=sid"}, nil, "sid", false},
		{"two values", []string{name + "=sid; " + name + "=other"}, nil, "other", true},
		{"a longer name", []string{"x" + name + "=v"}, []string{"x" + name + "=v"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.in != nil {
				h["Cookie"] = slices.Clone(tc.in)
			}
			value, conflict := takeCookie(h, name)
			if value != tc.value || conflict != tc.conflict || !slices.Equal(h["Cookie"], tc.out) {
				t.Errorf("got %q %v %q, want %q %v %q", value, conflict, h["Cookie"], tc.value, tc.conflict, tc.out)
			}
		})
	}
}

func TestDropSetCookie(t *testing.T) {
	h := http.Header{"Set-Cookie": {"__Host-sitegate=evil; Path=/", "theme=dark", " __Host-sitegate =x", "__Host-sitegatex=keep"}}
	dropSetCookie(h, "__Host-sitegate")
	if got := h["Set-Cookie"]; !slices.Equal(got, []string{"theme=dark", "__Host-sitegatex=keep"}) {
		t.Errorf("Set-Cookie %q", got)
	}
	h = http.Header{"Set-Cookie": {"__Host-sitegate=evil"}}
	dropSetCookie(h, "__Host-sitegate")
	if _, ok := h["Set-Cookie"]; ok {
		t.Errorf("Set-Cookie left: %q", h["Set-Cookie"])
	}
}

func TestSameSite(t *testing.T) {
	g := &sessionGate{origins: map[string]bool{"https://app.acme.example": true}}
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   *apiError
	}{
		{"curl", map[string]string{"Content-Type": "application/json"}, nil},
		{"charset", map[string]string{"Content-Type": "application/json; charset=utf-8"}, nil},
		{"same origin", map[string]string{"Content-Type": "application/json", "Origin": "https://api.acme.example", "Sec-Fetch-Site": "same-origin"}, nil},
		{"allowed origin", map[string]string{"Content-Type": "application/json", "Origin": "https://app.acme.example", "Sec-Fetch-Site": "same-site"}, nil},
		{"other origin", map[string]string{"Content-Type": "application/json", "Origin": "https://evil.example"}, errCrossSite},
		{"null origin", map[string]string{"Content-Type": "application/json", "Origin": "null"}, errCrossSite},
		{"origin with the host as userinfo", map[string]string{"Content-Type": "application/json", "Origin": "https://api.acme.example@evil.example"}, errCrossSite},
		{"cross-site fetch", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, errCrossSite},
		{"same-site fetch", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, errCrossSite},
		{"form", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, errContentType},
		{"text", map[string]string{"Content-Type": "text/plain"}, errContentType},
		{"no type", nil, errContentType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "https://api.acme.example/.sitegate/login", nil)
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			if got := g.sameSite(r); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSessionCredential(t *testing.T) {
	g := &sessionGate{}
	for _, tc := range []struct {
		name, auth, cookie string
		want               credential
		err                *apiError
		keepsAuth          bool
	}{
		{"nothing", "", "", credential{}, nil, false},
		{"cookie", "", "sid", credential{id: "sid", cookie: true}, nil, false},
		{"handle", "Session sid", "", credential{id: "sid"}, nil, false},
		{"handle any case", "session sid", "", credential{id: "sid"}, nil, false},
		{"handle and the same cookie", "Session sid", "sid", credential{id: "sid"}, nil, false},
		{"handle and another cookie", "Session sid", "other", credential{}, errTwoCredentials, true},
		{"malformed handle", "Session a b", "", credential{}, errInvalidRequest, true},
		{"bearer and cookie", "Bearer tok", "sid", credential{id: "sid", cookie: true}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.auth != "" {
				h.Set("Authorization", tc.auth)
			}
			c, err := g.sessionCredential(h, tc.cookie)
			if c != tc.want || err != tc.err {
				t.Errorf("got %+v %v, want %+v %v", c, err, tc.want, tc.err)
			}
			if got := h.Get("Authorization") != ""; tc.auth != "" && got != tc.keepsAuth {
				t.Errorf("Authorization kept: %v, want %v", got, tc.keepsAuth)
			}
		})
	}
}

func TestBufferBody(t *testing.T) {
	small := strings.Repeat("a", 100)
	large := strings.Repeat("b", maxReplayBody+10)
	for _, tc := range []struct {
		name       string
		body       io.Reader
		length     int64
		replayable bool
		want       string
	}{
		{"none", nil, 0, true, ""},
		{"small", strings.NewReader(small), int64(len(small)), true, small},
		{"small chunked", strings.NewReader(small), -1, true, small},
		{"large", strings.NewReader(large), int64(len(large)), false, large},
		{"large chunked", strings.NewReader(large), -1, false, large},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", tc.body)
			r.ContentLength = tc.length
			body, replayable, err := bufferBody(r)
			if err != nil || replayable != tc.replayable {
				t.Fatalf("replayable %v err %v, want %v", replayable, err, tc.replayable)
			}
			if replayable && string(body) != tc.want {
				t.Errorf("buffered %d bytes, want %d", len(body), len(tc.want))
			}
			rest, _ := io.ReadAll(r.Body)
			if string(rest) != tc.want {
				t.Errorf("the request body now reads %d bytes, want %d", len(rest), len(tc.want))
			}
		})
	}
	r := httptest.NewRequest("POST", "/", iotest.ErrReader(errors.New("client went away")))
	r.ContentLength = -1
	if _, _, err := bufferBody(r); err == nil {
		t.Error("a failed read was not reported")
	}
}

// provisionGate provisions a handler with sessions from JSON.
func provisionGate(t *testing.T, ctx caddy.Context, cfg string) *Handler {
	t.Helper()
	var h Handler
	if err := json.Unmarshal([]byte(cfg), &h); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return &h
}

// TestSessionBackendsShared checks the pools: handlers with one configuration share a store
// (so that memory sessions survive a reload), handlers on one Redis share its connection pool,
// and the last Cleanup closes them.
func TestSessionBackendsShared(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	const memory = `{"identity":{"dialect":"ece","url":"http://127.0.0.1:1"}}`
	a := provisionGate(t, ctx, memory)
	s := &sessions.Session{UserID: "u", Dialect: "ece", AccessToken: "at"}
	if err := a.gate.backend.store.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	reloaded := provisionGate(t, ctx, memory) // a reload provisions the new config first
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if got, err := reloaded.gate.backend.store.Load(context.Background(), s.ID); err != nil || got.AccessToken != "at" {
		t.Fatalf("after a reload: %v %v", got, err)
	}
	other := provisionGate(t, ctx, `{"identity":{"dialect":"ece","url":"http://127.0.0.1:1"},"session":{"idle_timeout":"5m"}}`)
	if other.gate.backend == reloaded.gate.backend {
		t.Error("different session options share a store")
	}
	store := reloaded.gate.backend.store
	for _, h := range []*Handler{reloaded, other} {
		if err := h.Cleanup(); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Ping(context.Background()); !errors.Is(err, sessions.ErrUnavailable) {
		t.Errorf("store after the last cleanup: %v, want closed", err)
	}

	// TLS, Sentinel and Cluster configurations load without touching the network.
	for _, redis := range []string{`{"cluster":["127.0.0.1:1"],"tls":true}`, `{"master_name":"m","sentinels":["127.0.0.1:1"],"tls":true}`, `{"url":"rediss://127.0.0.1:1"}`} {
		h := provisionGate(t, ctx, `{"identity":{"dialect":"ece","url":"http://127.0.0.1:1"},"session":{"keys":["`+testSessionKey+`"],"redis":`+redis+`}}`)
		if err := h.Cleanup(); err != nil {
			t.Errorf("%s: %v", redis, err)
		}
	}

	srv := redistest.Start(t)
	redisCfg := func(idle string) string {
		return `{"identity":{"dialect":"ece","url":"http://127.0.0.1:1"},"session":{"idle_timeout":"` + idle +
			`","keys":["` + testSessionKey + `"],"redis":{"url":"redis://` + srv.Addr + `"}}}`
	}
	r1, r2 := provisionGate(t, ctx, redisCfg("10m")), provisionGate(t, ctx, redisCfg("20m"))
	if r1.gate.backend == r2.gate.backend || r1.gate.backend.redisKey != r2.gate.backend.redisKey {
		t.Fatal("two stores on one Redis should be two backends on one connection pool")
	}
	if n, _ := redisPools.References(r1.gate.backend.redisKey); n != 2 {
		t.Errorf("redis pool references %d, want 2", n)
	}
	if err := r1.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := r2.gate.backend.store.Ping(context.Background()); err != nil {
		t.Errorf("the other store after one cleanup: %v", err)
	}
	key := r2.gate.backend.redisKey
	if err := r2.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, ok := redisPools.References(key); ok {
		t.Error("the Redis pool outlived its last user")
	}
}

// TestEndpointRouting checks the prefix match and the methods, without Identity.
func TestEndpointRouting(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := provisionGate(t, ctx, `{"identity":{"dialect":"ece","url":"http://127.0.0.1:1"}}`)
	defer h.Cleanup()
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/.sitegate/healthz", 200, ""},
		{"HEAD", "/.sitegate/healthz", 200, ""},
		{"POST", "/.sitegate/healthz", 405, "METHOD_NOT_ALLOWED"},
		{"GET", "/.sitegate/login", 405, "METHOD_NOT_ALLOWED"},
		{"GET", "/.sitegate/nothing", 404, "NOT_FOUND"},
		{"GET", "/.sitegate", 404, "NOT_FOUND"},
		{"GET", "/.sitegate/session", 401, "MISSING_CREDENTIALS"},
		{"GET", "/.sitegateway", 401, "MISSING_CREDENTIALS"}, // not under the prefix: the gateway's
		{"POST", "/.sitegate/logout", 415, "INVALID_REQUEST"},
	} {
		rec := serve(t, h, tc.method, tc.path, nil)
		var body map[string]string
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != tc.status || body["error"] != tc.code {
			t.Errorf("%s %s: %d %s, want %d %s", tc.method, tc.path, rec.Code, rec.Body, tc.status, tc.code)
		}
		if tc.status == 405 && rec.Header().Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
		}
	}
}

// serve runs one request through h with a replacer, as Caddy does; next answers 200 "next".
func serve(t *testing.T, h *Handler, method, path string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	rec := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, err := w.Write([]byte("next"))
		return err
	})
	if err := h.ServeHTTP(rec, r, next); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return rec
}

// TestEndpointCORS checks that only allow-listed origins get CORS headers and a preflight.
func TestEndpointCORS(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := provisionGate(t, ctx, `{"identity":{"dialect":"ece","url":"http://127.0.0.1:1"},"session":{"allow_origins":["https://app.acme.example"]}}`)
	defer h.Cleanup()
	for _, tc := range []struct {
		method, origin string
		status         int
		cors           bool
	}{
		{"OPTIONS", "https://app.acme.example", 204, true},
		{"GET", "https://app.acme.example", 200, true},
		{"OPTIONS", "https://evil.example", 405, false},
		{"GET", "https://evil.example", 200, false},
	} {
		r := httptest.NewRequest(tc.method, "/.sitegate/healthz", nil)
		r.Header.Set("Origin", tc.origin)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		rec := httptest.NewRecorder()
		if err := h.ServeHTTP(rec, r, nil); err != nil {
			t.Fatal(err)
		}
		got := rec.Header().Get("Access-Control-Allow-Origin")
		if rec.Code != tc.status || (got == tc.origin) != tc.cors || (got != "" && rec.Header().Get("Access-Control-Allow-Credentials") != "true") {
			t.Errorf("%s from %s: %d, CORS origin %q", tc.method, tc.origin, rec.Code, got)
		}
	}
}
