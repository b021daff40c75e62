package e2e

import (
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

const demoAccount = "5f689caa4216e7000750d1ef"

// recorder is an upstream that records every request it receives.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	url  string
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, r.Clone(r.Context()))
		rec.mu.Unlock()
		_, _ = io.WriteString(w, "upstream")
	}))
	t.Cleanup(srv.Close)
	rec.url = srv.URL
	return rec
}

// take returns the requests recorded since the last call.
func (rec *recorder) take() []*http.Request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := rec.reqs
	rec.reqs = nil
	return out
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// gateway is a running Caddy with the emulator and sitegate in front of a recorder.
type gateway struct {
	identity, url string
	upstream      *recorder
	logFile       string
}

func startGateway(t *testing.T, extra string) *gateway {
	t.Helper()
	g := &gateway{upstream: newRecorder(t)}
	idPort, gwPort, closed := freePort(t), freePort(t), freePort(t)
	g.identity = fmt.Sprintf("http://127.0.0.1:%d", idPort)
	g.url = fmt.Sprintf("http://127.0.0.1:%d", gwPort)
	g.logFile = startCaddy(t, fmt.Sprintf(`
http://:%[1]d {
	bind 127.0.0.1
	identity_emulator {
		api_key demo-api-key
		issuer http://127.0.0.1:%[1]d
		user demo demo-password account %[4]s
		client demo-system-app demo-system-secret
	}
}
http://:%[2]d {
	bind 127.0.0.1
	route /public/* {
		sitegate {
			anonymous
		}
		reverse_proxy %[3]s
	}
	route /nokeys/* {
		sitegate {
			issuer http://127.0.0.1:%[1]d/oauth2/default
			audience api://default
			jwks http://127.0.0.1:%[5]d/keys
		}
		reverse_proxy %[3]s
	}
	route /styled/* {
		sitegate {
			use_handle_errors
			issuer http://127.0.0.1:%[1]d/oauth2/default
			audience api://default
			jwks http://127.0.0.1:%[1]d/oauth2/default/v1/keys
		}
		reverse_proxy %[3]s
	}
	route /metrics {
		metrics
	}
	route {
		sitegate {
			issuer     http://127.0.0.1:%[1]d/oauth2/default
			audience   api://default
			jwks       http://127.0.0.1:%[1]d/oauth2/default/v1/keys
			introspect http://127.0.0.1:%[1]d/ums/v2/users/self
			site_context {
				account %[4]s
				channel 12
				stage   production
				allow_client channel
				fabric_v3_headers
			}
			identity_header X-User-Id {http.auth.user.id}
			identity_header X-User-Name {http.auth.user.name}
		}
		reverse_proxy %[3]s
	}
	handle_errors {
		respond "styled {http.sitegate.error.code}: {http.sitegate.error.message}" {http.error.status_code}
	}
}
%[6]s`, idPort, gwPort, g.upstream.url, demoAccount, closed, extra))
	return g
}

// v1Token logs the demo user in at the emulator and returns the v1 access token.
func (g *gateway) v1Token(t *testing.T) string {
	t.Helper()
	h := http.Header{"X-Api-Key": {"demo-api-key"}, "X-Site-Context": {`{"account":"` + demoAccount + `"}`}, "Content-Type": {"application/json"}}
	status, _, body := send(t, "POST", g.identity+"/api-commerceIdentity/auth/local/login", h, `{"username":"demo","password":"demo-password"}`)
	var login struct{ AccessToken string }
	decode(t, body, &login)
	if status != http.StatusOK || login.AccessToken == "" {
		t.Fatalf("login: %d %s", status, body)
	}
	return login.AccessToken
}

// systemToken gets a client_credentials token, verified locally by the gateway.
func (g *gateway) systemToken(t *testing.T) string {
	t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("demo-system-app:demo-system-secret")))
	status, _, body := send(t, "POST", g.identity+"/oauth2/default/v1/token", h, url.Values{"grant_type": {"client_credentials"}, "scope": {"s2s"}}.Encode())
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	decode(t, body, &tok)
	if status != http.StatusOK {
		t.Fatalf("client_credentials: %d %s", status, body)
	}
	return tok.AccessToken
}

// call sends a request through the gateway with token as bearer (when not empty).
func (g *gateway) call(t *testing.T, path, token string, header http.Header) (int, http.Header, string) {
	t.Helper()
	h := header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return send(t, "GET", g.url+path, h, "")
}

// apiError decodes a fabric APIError body and checks its status and code.
func apiError(t *testing.T, status int, body string, wantStatus int, wantCode string) {
	t.Helper()
	var e struct{ Error, Code, Message string }
	decode(t, body, &e)
	if status != wantStatus || e.Error != wantCode || e.Code != fmt.Sprint(wantStatus) || e.Message == "" {
		t.Fatalf("got %d %s, want %d %s", status, body, wantStatus, wantCode)
	}
}

func TestGateway(t *testing.T) {
	g := startGateway(t, "")
	v1 := g.v1Token(t)
	sys := g.systemToken(t)
	waitReady(t, g, sys)

	t.Run("v1 token by introspection: the upstream gets exactly the injected headers", func(t *testing.T) {
		spoof := http.Header{
			"X-Site-Context": {`{"account":"` + demoAccount + `","channel":13,"stage":"dev"}`},
			"X-User-Id":      {"admin"},
			"Connection":     {"X-User-Id, X-Site-Context"},
		}
		spoof["X_Site_Context"] = []string{`{"account":"614bacaa4a74a70009d69d33"}`}
		spoof["x_user_id"] = []string{"root"}
		status, _, body := g.call(t, "/orders", v1, spoof)
		if status != http.StatusOK || body != "upstream" {
			t.Fatalf("through the gateway: %d %s", status, body)
		}
		reqs := g.upstream.take()
		if len(reqs) != 1 {
			t.Fatalf("the upstream got %d requests, want 1", len(reqs))
		}
		got := reqs[0].Header
		want := map[string][]string{
			"X-Site-Context":      {`{"account":"` + demoAccount + `","channel":13,"stage":"production"}`},
			"X-Fabric-Tenant-Id":  {demoAccount},
			"X-Fabric-Channel-Id": {"13"},
			"Authorization":       {"Bearer " + v1},
		}
		for name, values := range want {
			if fmt.Sprint(got[name]) != fmt.Sprint(values) {
				t.Errorf("upstream %s = %q, want %q", name, got[name], values)
			}
		}
		if id := got.Values("X-User-Id"); len(id) != 1 || len(id[0]) != 24 || id[0] == "admin" {
			t.Errorf("upstream X-User-Id = %q, want the user's id only", id)
		}
		for name := range got {
			if strings.Contains(name, "_") {
				t.Errorf("a spoofed %s reached the upstream", name)
			}
		}
	})

	t.Run("system token verified locally", func(t *testing.T) {
		status, _, body := g.call(t, "/orders", sys, nil)
		if status != http.StatusOK {
			t.Fatalf("%d %s", status, body)
		}
		got := g.upstream.take()[0].Header
		if got.Get("X-User-Id") != "demo-system-app" || got.Get("X-Site-Context") != `{"account":"`+demoAccount+`","channel":12,"stage":"production"}` {
			t.Errorf("upstream headers %v", got)
		}
	})

	for _, tc := range []struct {
		name, token string
		header      http.Header
		status      int
		code        string
	}{
		{"no credentials", "", nil, 401, "MISSING_CREDENTIALS"},
		{"garbage token", "not.a.token", nil, 401, "INVALID_TOKEN"},
		{"forged account", v1, http.Header{"X-Site-Context": {`{"account":"614bacaa4a74a70009d69d33"}`}}, 403, "ACCOUNT_MISMATCH"},
		{"malformed site context", v1, http.Header{"X-Site-Context": {`{"account":`}}, 400, "INVALID_SITE_CONTEXT"},
		{"two credentials", "", http.Header{"Authorization": {"Bearer " + v1, "Bearer " + sys}}, 400, "INVALID_REQUEST"},
		{"basic auth", "", http.Header{"Authorization": {"Basic ZGVtbzpkZW1vLXBhc3N3b3Jk"}}, 401, "INVALID_TOKEN"},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			status, h, body := g.call(t, "/orders?access_token="+url.QueryEscape(v1), tc.token, tc.header)
			apiError(t, status, body, tc.status, tc.code)
			if status == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), `Bearer realm="sitegate"`) {
				t.Errorf("401 without a Bearer challenge: %q", h.Get("WWW-Authenticate"))
			}
			if n := len(g.upstream.take()); n != 0 {
				t.Errorf("a refused request reached the upstream (%d)", n)
			}
			if strings.Contains(body, v1) || strings.Contains(h.Get("WWW-Authenticate"), v1) {
				t.Error("the answer echoes the token")
			}
		})
	}

	t.Run("expired token", func(t *testing.T) {
		send(t, "PUT", g.identity+"/_emulator/clock", nil, `{"skew":"-2h"}`)
		old := g.v1Token(t)
		send(t, "PUT", g.identity+"/_emulator/clock", nil, `{"skew":"0s"}`)
		status, _, body := g.call(t, "/orders", old, nil)
		apiError(t, status, body, 401, "TOKEN_EXPIRED")
	})

	t.Run("identity down: 503 with Retry-After, never 401", func(t *testing.T) {
		send(t, "POST", g.identity+"/_emulator/faults", nil, `{"endpoint":"ums.get_self","status":503}`)
		defer send(t, "DELETE", g.identity+"/_emulator/faults", nil, "")
		status, h, body := g.call(t, "/orders", g.v1Token(t), nil) // a new token: not cached
		apiError(t, status, body, 503, "IDENTITY_UNAVAILABLE")
		if h.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	})

	t.Run("keys not loaded: 503, not 401", func(t *testing.T) {
		status, _, body := g.call(t, "/nokeys/x", sys, nil)
		apiError(t, status, body, 503, "IDENTITY_UNAVAILABLE")
	})

	t.Run("anonymous route strips and passes", func(t *testing.T) {
		status, _, _ := g.call(t, "/public/x", "", http.Header{"X-Site-Context": {`{"account":"` + demoAccount + `"}`}})
		reqs := g.upstream.take()
		if status != http.StatusOK || len(reqs) != 1 || reqs[0].Header.Get("X-Site-Context") != "" {
			t.Fatalf("anonymous: %d, upstream %v", status, reqs)
		}
	})

	t.Run("handle_errors renders the error", func(t *testing.T) {
		status, h, body := g.call(t, "/styled/x", "", nil)
		if status != 401 || body != "styled MISSING_CREDENTIALS: A bearer token is required." || h.Get("WWW-Authenticate") == "" {
			t.Fatalf("styled error: %d %q %v", status, body, h)
		}
	})

	t.Run("metrics count outcomes", func(t *testing.T) {
		_, _, body := send(t, "GET", g.url+"/metrics", nil, "")
		for _, want := range []string{`sitegate_requests_total{outcome="ok"}`, `sitegate_requests_total{outcome="missing_credentials"}`,
			`sitegate_jwks_fetches_total{result="ok"}`, `sitegate_introspection_total{result="valid"}`, `sitegate_token_validations_total{result="cache_hit"}`} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
		if strings.Contains(body, v1) || strings.Contains(body, demoAccount) {
			t.Error("a metric label holds a token or an account")
		}
	})

	t.Run("no token in the logs", func(t *testing.T) {
		logs := readLogs(t, g.logFile)
		for _, s := range []string{v1, sys, "demo-system-secret", "demo-password"} {
			if strings.Contains(logs, s) {
				t.Errorf("the logs hold a secret (%.12s…)", s)
			}
		}
	})
}

// waitReady waits until the gateway has loaded its keys (a background fetch at start).
func waitReady(t *testing.T, g *gateway, token string) {
	t.Helper()
	for range 100 {
		if status, _, _ := g.call(t, "/orders", token, nil); status != http.StatusServiceUnavailable {
			g.upstream.take()
			return
		}
		sleep()
	}
	t.Fatal("the gateway's keys never loaded")
}
