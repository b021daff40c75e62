package e2e

import (
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

const (
	identity = "http://127.0.0.1:8090"
	echo     = "http://127.0.0.1:8091"
	demoSite = `{"account":"5f689caa4216e7000750d1ef","channel":12,"stage":"production"}`
)

func v1Header() http.Header {
	return http.Header{
		"X-Api-Key":      {"demo-api-key"},
		"X-Site-Context": {demoSite},
		"Content-Type":   {"application/json"},
	}
}

// TestDemo runs Caddyfile.example as it is and checks what the README promises of it.
func TestDemo(t *testing.T) {
	logFile := startCaddy(t, readFile(t, "Caddyfile.example"))
	var secrets []string // everything that must never appear in Caddy's logs

	t.Run("echo upstream shows every header it received", func(t *testing.T) {
		status, _, body := send(t, "GET", echo+"/orders?id=7", http.Header{
			"X-Site-Context": {demoSite},
			"X-Dup":          {"one", "two"},
		}, "")
		for _, want := range []string{"GET /orders?id=7", "Host: 127.0.0.1:8091", "X-Site-Context: " + demoSite, "X-Dup: one", "X-Dup: two"} {
			if status != http.StatusOK || !strings.Contains(body, want+"\n") {
				t.Errorf("echo answered %d without line %q:\n%s", status, want, body)
			}
		}
	})

	t.Run("v1 login, refresh, rotation and the call counters", func(t *testing.T) {
		send(t, "POST", identity+"/_emulator/reset", nil, "")
		status, _, body := send(t, "POST", identity+"/api-commerceIdentity/auth/local/login", v1Header(),
			`{"username":"demo","password":"demo-password"}`)
		var login struct{ UserID, Account, AccessToken, RefreshToken string }
		decode(t, body, &login)
		if status != http.StatusOK || login.AccessToken == "" || login.RefreshToken == "" || login.Account != "5f689caa4216e7000750d1ef" {
			t.Fatalf("login: %d %s", status, body)
		}
		secrets = append(secrets, login.AccessToken, login.RefreshToken)

		refresh := fmt.Sprintf(`{"refreshToken":%q}`, login.RefreshToken)
		status, _, body = send(t, "POST", identity+"/api-commerceIdentity/auth/local/refresh", v1Header(), refresh)
		var refreshed struct{ AccessToken, RefreshToken string }
		decode(t, body, &refreshed)
		if status != http.StatusOK || refreshed.RefreshToken == login.RefreshToken || refreshed.AccessToken == "" {
			t.Fatalf("refresh: %d %s", status, body)
		}
		secrets = append(secrets, refreshed.AccessToken, refreshed.RefreshToken)

		status, _, body = send(t, "POST", identity+"/api-commerceIdentity/auth/local/refresh", v1Header(), refresh)
		if status != http.StatusBadRequest || !strings.Contains(body, `"LOCAL_AUTH_FAILED"`) {
			t.Fatalf("reusing a rotated refresh token: %d %s", status, body)
		}

		var calls struct {
			Calls             map[string]int `json:"calls"`
			RefreshTokenReuse int            `json:"refresh_token_reuse"`
		}
		_, _, body = send(t, "GET", identity+"/_emulator/calls", nil, "")
		decode(t, body, &calls)
		if calls.Calls["v1.login"] != 1 || calls.Calls["v1.refresh"] != 2 || calls.RefreshTokenReuse != 1 {
			t.Fatalf("counters after one login, two refreshes, one reuse: %s", body)
		}
	})

	t.Run("system app token verifies against the published JWKS", func(t *testing.T) {
		req := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
		req.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("demo-system-app:demo-system-secret")))
		status, _, body := send(t, "POST", identity+"/oauth2/default/v1/token", req, "grant_type=client_credentials&scope=s2s")
		var tok struct {
			TokenType   string `json:"token_type"`
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
			Scope       string `json:"scope"`
		}
		decode(t, body, &tok)
		if status != http.StatusOK || tok.TokenType != "Bearer" || tok.Scope != "s2s" || tok.ExpiresIn != 600 {
			t.Fatalf("client_credentials: %d %s", status, body)
		}
		secrets = append(secrets, tok.AccessToken, "demo-system-secret")

		_, _, body = send(t, "GET", identity+"/oauth2/default/v1/keys", nil, "")
		keys := jwks(t, body)
		claims := jwt.MapClaims{}
		_, err := jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(identity+"/oauth2/default"),
			jwt.WithAudience("api://default"), jwt.WithExpirationRequired()).
			ParseWithClaims(tok.AccessToken, claims, func(t *jwt.Token) (any, error) {
				if k, ok := keys[fmt.Sprint(t.Header["kid"])]; ok {
					return k, nil
				}
				return nil, errors.New("kid not in the JWKS")
			})
		if err != nil || claims["cid"] != "demo-system-app" || claims["sub"] != "demo-system-app" {
			t.Fatalf("system token: %v, claims %v", err, claims)
		}
	})

	t.Run("a dropped connection fault reaches the client through Caddy", func(t *testing.T) {
		send(t, "POST", identity+"/_emulator/faults", nil, `{"endpoint":"v1.login","drop":true,"times":1}`)
		req, _ := http.NewRequest("POST", identity+"/api-commerceIdentity/auth/local/login",
			strings.NewReader(`{"username":"demo","password":"demo-password"}`))
		req.Header = v1Header()
		if res, err := client.Do(req); err == nil {
			res.Body.Close()
			t.Fatalf("a dropped call answered %d", res.StatusCode)
		}
		status, _, body := send(t, "POST", identity+"/api-commerceIdentity/auth/local/login", v1Header(),
			`{"username":"demo","password":"demo-password"}`)
		if status != http.StatusOK {
			t.Fatalf("the call after a one-time fault: %d %s", status, body)
		}
		send(t, "POST", identity+"/_emulator/reset", nil, "")
	})

	t.Run("the README's demo commands work as written", func(t *testing.T) {
		out := runReadmeDemo(t)
		for _, want := range []string{`"userType": "customer"`, `"error": "LOCAL_AUTH_FAILED"`, `"isDefault": true`,
			`"error": "BAD_REQUEST"`, `"scope": "s2s"`, `"v1.login"`, "X-Site-Context: ",
			`X-Site-Context: {"account":"5f689caa4216e7000750d1ef","channel":13,"stage":"production"}`,
			`"error": "ACCOUNT_MISMATCH"`, `Www-Authenticate: Bearer realm="sitegate"`} {
			if !strings.Contains(out, want) {
				t.Errorf("the README demo's output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("no secret reaches the logs", func(t *testing.T) {
		logs := readLogs(t, logFile)
		for _, s := range append(secrets, "demo-password", "demo-api-key") {
			if s != "" && strings.Contains(logs, s) {
				t.Errorf("Caddy's log holds a secret (%.12s…)", s)
			}
		}
	})
}

// jwks parses the RSA keys of a JSON Web Key Set by kid.
func jwks(t *testing.T, body string) map[string]*rsa.PublicKey {
	t.Helper()
	var set struct {
		Keys []struct{ Kid, Kty, N, E string } `json:"keys"`
	}
	decode(t, body, &set)
	out := map[string]*rsa.PublicKey{}
	for _, k := range set.Keys {
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if k.Kty != "RSA" || err1 != nil || err2 != nil {
			t.Fatalf("bad key in JWKS: %s", body)
		}
		out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	return out
}

// readmeDemo matches the shell blocks of the README that follow a "<!-- demo -->" marker.
var readmeDemo = regexp.MustCompile("(?s)<!-- demo -->\\s*```sh\n(.*?)```")

// runReadmeDemo runs the README's demo commands with bash against the running demo and returns
// their output. They need curl and jq: CI installs both; elsewhere the test is skipped without them.
func runReadmeDemo(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required (.ci/run installs it)", tool)
			}
			t.Skipf("%s is not installed; the README's demo commands need it", tool)
		}
	}
	blocks := readmeDemo.FindAllStringSubmatch(readFile(t, "README.md"), -1)
	if len(blocks) < 3 {
		t.Fatalf("found %d demo blocks in README.md, want the whole walk-through", len(blocks))
	}
	script := "set -euo pipefail\n"
	for _, b := range blocks {
		script += b[1]
	}
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("the README's demo commands failed: %v\n%s", err, out)
	}
	return string(out)
}
