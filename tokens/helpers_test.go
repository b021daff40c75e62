package tokens

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sitegate/sitegate/upstream/emulator"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "api://default"
	testAccount  = "5f689caa4216e7000750d1ef"
)

// clock is a settable Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is an Observer that counts events, named "<method>.<result>".
type recorder struct {
	mu     sync.Mutex
	events map[string]int
}

func newRecorder() *recorder { return &recorder{events: map[string]int{}} }

func (r *recorder) add(name string) {
	r.mu.Lock()
	r.events[name]++
	r.mu.Unlock()
}

func (r *recorder) JWKSFetch(s string)     { r.add("jwks." + s) }
func (r *recorder) UnknownKID(b bool)      { r.add(fmt.Sprintf("unknown_kid.%t", b)) }
func (r *recorder) Introspection(s string) { r.add("introspection." + s) }
func (r *recorder) Validation(s string)    { r.add("validation." + s) }

func (r *recorder) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[name]
}

// Keys are generated once per test binary: RSA generation is slow.
var (
	rsaKeys = sync.OnceValue(func() []*rsa.PrivateKey {
		keys := make([]*rsa.PrivateKey, 2)
		for i := range keys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			keys[i] = k
		}
		return keys
	})
	ecKey = sync.OnceValue(func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
	edKey = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func rsaKey() *rsa.PrivateKey { return rsaKeys()[0] }

func enc(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwkOf renders a public key as a JWK with kid and, when not empty, alg.
func jwkOf(kid, alg string, pub crypto.PublicKey) map[string]any {
	m := map[string]any{"use": "sig"}
	if kid != "" {
		m["kid"] = kid
	}
	if alg != "" {
		m["alg"] = alg
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", enc(k.N.Bytes()), enc(big.NewInt(int64(k.E)).Bytes())
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		b, err := k.Bytes()
		if err != nil {
			panic(err)
		}
		m["kty"], m["crv"], m["x"], m["y"] = "EC", k.Curve.Params().Name, enc(b[1:1+size]), enc(b[1+size:])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", enc(k)
	default:
		panic(fmt.Sprintf("jwkOf: %T", pub))
	}
	return m
}

// keyServer serves a key set (or any answer) and counts its hits.
type keyServer struct {
	*httptest.Server
	hits   atomic.Int64
	mu     sync.Mutex
	status int
	body   []byte
	// failFirst answers 503 to that many requests before the body.
	failFirst int
}

func newKeyServer(t *testing.T, keys ...map[string]any) *keyServer {
	t.Helper()
	s := &keyServer{}
	s.setKeys(keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		status, body := s.status, s.body
		if s.failFirst > 0 {
			s.failFirst--
			status, body = http.StatusServiceUnavailable, []byte(`{"error":"down"}`)
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *keyServer) setKeys(keys ...map[string]any) {
	if keys == nil {
		keys = []map[string]any{}
	}
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		panic(err)
	}
	s.set(http.StatusOK, b)
}

func (s *keyServer) set(status int, body []byte) {
	s.mu.Lock()
	s.status, s.body = status, body
	s.mu.Unlock()
}

// claims returns valid claims for testIssuer at now, with overrides (a nil value deletes).
func claims(now time.Time, kv ...any) jwt.MapClaims {
	c := jwt.MapClaims{
		"iss": testIssuer, "aud": testAudience, "sub": "user-1",
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

// sign signs c with key under method, with header fields hdr (a nil value deletes).
func sign(t testing.TB, method jwt.SigningMethod, key any, hdr map[string]any, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	for k, v := range hdr {
		if v == nil {
			delete(tok.Header, k)
		} else {
			tok.Header[k] = v
		}
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("signing: %v", err)
	}
	return s
}

// rawToken assembles a token from a header and payload (JSON values) and a signature.
func rawToken(hdr, payload any, sig string) string {
	h, _ := json.Marshal(hdr)
	p, _ := json.Marshal(payload)
	return enc(h) + "." + enc(p) + "." + sig
}

// newValidator builds and starts a validator, closed at cleanup, and waits until it is ready.
func newValidator(t *testing.T, cfg Config) *Validator {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	v.Start()
	waitFor(t, "keys loaded", v.Ready)
	return v
}

// waitFor polls cond for up to five seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantErr fails unless err wraps want (nil: no error).
func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

// emu is the identity emulator on a loopback server.
type emu struct {
	t   testing.TB
	URL string
}

func newEmu(t testing.TB) *emu {
	t.Helper()
	e, err := emulator.New(emulator.Config{
		Users:   []emulator.User{{Username: "pat", Password: "pat-password", Account: testAccount}},
		Clients: []emulator.Client{{ID: "sysapp", Secret: "sysapp-secret"}},
	}, nil)
	if err != nil {
		t.Fatalf("emulator: %v", err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return &emu{t: t, URL: srv.URL}
}

func (e *emu) issuer() string  { return e.URL + "/oauth2/default" }
func (e *emu) jwksURL() string { return e.issuer() + "/v1/keys" }

func (e *emu) do(method, path string, header http.Header, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// clientToken is an OAuth2 client_credentials access token of the default server.
func (e *emu) clientToken() string {
	e.t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("sysapp:sysapp-secret")))
	status, b := e.do("POST", "/oauth2/default/v1/token", h, url.Values{"grant_type": {"client_credentials"}}.Encode())
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if status != http.StatusOK || json.Unmarshal(b, &out) != nil || out.AccessToken == "" {
		e.t.Fatalf("token: %d %s", status, b)
	}
	return out.AccessToken
}

// v1Token is a v1 user access token (no iss claim: it can only be introspected).
func (e *emu) v1Token() string {
	e.t.Helper()
	h := http.Header{"Content-Type": {"application/json"}, "X-Site-Context": {`{"account":"` + testAccount + `"}`}}
	status, b := e.do("POST", "/api-commerceIdentity/auth/local/login", h, `{"username":"pat","password":"pat-password"}`)
	var out struct {
		AccessToken string `json:"accessToken"`
	}
	if status != http.StatusOK || json.Unmarshal(b, &out) != nil || out.AccessToken == "" {
		e.t.Fatalf("login: %d %s", status, b)
	}
	return out.AccessToken
}

func (e *emu) calls(name string) int {
	e.t.Helper()
	_, b := e.do("GET", "/_emulator/calls", nil, "")
	var c emulator.Calls
	if err := json.Unmarshal(b, &c); err != nil {
		e.t.Fatalf("calls: %v", err)
	}
	return c.Calls[name]
}

func (e *emu) control(method, path, body string) {
	e.t.Helper()
	status, b := e.do(method, "/_emulator/"+path, http.Header{"Content-Type": {"application/json"}}, body)
	if status >= 300 {
		e.t.Fatalf("%s /_emulator/%s: %d %s", method, path, status, b)
	}
}

func (e *emu) fault(f string) { e.control("POST", "faults", f) }
func (e *emu) clearFaults()   { e.control("DELETE", "faults", "") }
func (e *emu) rotate()        { e.control("POST", "keys/rotate", "") }

// validate is Validate with a background context.
func validate(v *Validator, raw string) (*Identity, error) {
	return v.Validate(context.Background(), raw)
}
