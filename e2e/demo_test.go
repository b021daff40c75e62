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
	"path/filepath"
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
		runs, tmp := demoReadmeRuns(t)
		var all strings.Builder
		for _, r := range runs {
			all.WriteString(r.output)
		}
		out := all.String()
		for _, want := range []string{`"userType": "customer"`, `"error": "LOCAL_AUTH_FAILED"`, `"isDefault": true`,
			`"error": "BAD_REQUEST"`, `"scope": "s2s"`, `"v1.login"`, `"endpoint": "v1.refresh"`, "X-Site-Context: ",
			`X-Site-Context: {"account":"5f689caa4216e7000750d1ef","channel":13,"stage":"production"}`,
			`"error": "ACCOUNT_MISMATCH"`, `Www-Authenticate: Bearer realm="sitegate"`} {
			if !strings.Contains(out, want) {
				t.Errorf("the README demo's output lacks %q:\n%s", want, out)
			}
		}

		// Sign in through the gateway: the session IDs are in the cookie jars (mktemp, in tmp);
		// they, like the tokens, must never be logged.
		jars, _ := filepath.Glob(filepath.Join(tmp, "*"))
		cookies := 0
		for _, jar := range jars {
			b, _ := os.ReadFile(jar)
			for _, m := range demoJarCookie.FindAllStringSubmatch(string(b), -1) {
				secrets = append(secrets, m[1])
				cookies++
			}
		}
		if cookies == 0 {
			t.Errorf("no session cookie in the demo's cookie jars %v", jars)
		}

		login := demoOutput(t, runs, "$GW/.sitegate/login | jq .")
		for _, want := range []string{`"id": "680975f8bafd010586929aea"`, `"name": "Pat Kake"`,
			`"account": "5f689caa4216e7000750d1ef"`, `"dialect": "fabric_v1"`} {
			if !strings.Contains(login, want) {
				t.Errorf("the login answer lacks %q:\n%s", want, login)
			}
		}
		if strings.Contains(strings.ToLower(login), "token") || strings.Contains(login, "eyJ") {
			t.Errorf("the login answer holds a token:\n%s", login)
		}

		call := demoOutput(t, runs, "-b 'theme=dark'")
		for _, want := range []string{"GET /orders\n", "\nAuthorization: Bearer eyJ", "\nX-Site-Context: " + demoSite + "\n",
			"\nX-User-Id: 680975f8bafd010586929aea\n", "\nCookie: theme=dark\n", `"dialect":"fabric_v1"`, `{"status":"ok"}`} {
			if !strings.Contains(call, want) {
				t.Errorf("the call through the gateway lacks %q:\n%s", want, call)
			}
		}
		if strings.Contains(call, "__Host-sitegate") || strings.Contains(strings.ToLower(call), "token") {
			t.Errorf("sitegate's cookie or a token reached the upstream's view or the session answer:\n%s", call)
		}

		refresh := demoOutput(t, runs, "sleep ")
		m := demoRefreshed.FindStringSubmatch(refresh)
		if m == nil || m[1] == m[2] {
			t.Errorf("the upstream's bearer token did not change after the sleep:\n%s", refresh)
		} else {
			secrets = append(secrets, m[1], m[2]) // tails of the session's access tokens
		}
		var calls struct {
			Calls             map[string]int `json:"calls"`
			RefreshTokenReuse *int           `json:"refresh_token_reuse"`
		}
		_, counters, _ := strings.Cut(refresh, "\n{")
		decode(t, "{"+counters, &calls)
		if calls.Calls["v1.refresh"] != 1 || calls.RefreshTokenReuse == nil || *calls.RefreshTokenReuse != 0 {
			t.Errorf("want exactly one refresh at Identity, no refresh token presented twice:\n%s", refresh)
		}

		handle := demoOutput(t, runs, `"handle":true`)
		if !strings.Contains(handle, "\nAuthorization: Bearer eyJ") || strings.Contains(handle, "Session") {
			t.Errorf("a handle's request did not reach the upstream with the session's bearer token alone:\n%s", handle)
		}

		logout := demoOutput(t, runs, "/.sitegate/logout")
		for _, want := range []string{"HTTP/1.1 204 No Content", "Set-Cookie: __Host-sitegate=; Path=/; Max-Age=0;",
			`"code": "401"`, `"error": "SESSION_EXPIRED"`, "HTTP/1.1 401 Unauthorized",
			`Www-Authenticate: Bearer realm="sitegate"`} {
			if !strings.Contains(logout, want) {
				t.Errorf("logout and the calls after it lack %q:\n%s", want, logout)
			}
		}
		if strings.Contains(logout, `error="invalid_token"`) {
			t.Errorf("an ended session is challenged as an invalid bearer token:\n%s", logout)
		}

		browser := strings.ReplaceAll(demoOutput(t, runs, "$APP/.sitegate/login?rd=/orders"), "\r", "")
		for _, want := range []string{"302 http://localhost:8080/.sitegate/login?rd=%2Forders\n",
			"\nhttp://127.0.0.1:8090/oauth2/default/v1/authorize\n", "\ncode_challenge_method=S256\n", "\nscope=openid+offline_access\n",
			"HTTP/1.1 303 See Other", "\nLocation: /orders\n", "\nSet-Cookie: __Host-sitegate-login=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax\n",
			"\nSet-Cookie: __Host-sitegate=…; Path=/; Max-Age=", "\nGET /orders\n", "\nAuthorization: Bearer eyJ", "\nX-Site-Context: " + demoSite + "\n",
			"\nX-User-Id: "} {
			if !strings.Contains(browser, want) {
				t.Errorf("the OAuth2 sign-in lacks %q:\n%s", want, browser)
			}
		}

		sidecar := demoOutput(t, runs, "$SIDECAR/api-product/v1/product")
		for _, want := range []string{"      3 Authorization: Bearer eyJ", "      3 GET /api-product/v1/product\n",
			"      3 X-Site-Context: " + demoSite + "\n", "\ntoken fetches for these calls: 0\n"} {
			if !strings.Contains(sidecar, want) {
				t.Errorf("the sidecar's calls lack %q (one token fetch for three calls):\n%s", want, sidecar)
			}
		}
		if strings.Contains(sidecar, "the-apps-own") {
			t.Errorf("the application's own Authorization reached the upstream:\n%s", sidecar)
		}
	})

	t.Run("a browser signs in through the gateway", func(t *testing.T) {
		secrets = append(secrets, browserSignIn(t))
	})

	t.Run("no secret reaches the logs", func(t *testing.T) {
		logs := readLogs(t, logFile)
		for _, s := range append(secrets, "demo-password", "demo-api-key", "demo-system-secret") {
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

var (
	// demoJarCookie finds sitegate's session cookie in a curl cookie jar.
	demoJarCookie = regexp.MustCompile(`\t__Host-sitegate\t(\S+)`)
	// demoRefreshed finds the tails of the tokens the upstream saw before and after a refresh.
	demoRefreshed = regexp.MustCompile(`before: …(\S+)\nafter: +…(\S+)`)
)

// demoEnd is printed after each demo block, to tell their outputs apart.
const demoEnd = "--- end of a README demo block ---"

// demoRun is a README demo block and what it printed.
type demoRun struct{ script, output string }

// demoReadmeRuns runs the README's demo blocks in one bash, in order, against the running demo,
// and returns each block's output, and the TMPDIR they ran with (where mktemp puts the cookie
// jars). They need curl and jq: CI installs both; elsewhere the test is skipped without them.
func demoReadmeRuns(t *testing.T) ([]demoRun, string) {
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
		script += b[1] + "printf '\\n%s\\n' '" + demoEnd + "'\n"
	}
	tmp := t.TempDir()
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's demo commands failed: %v\n%s", err, out)
	}
	outputs := strings.Split(string(out), "\n"+demoEnd+"\n")
	if len(outputs) != len(blocks)+1 {
		t.Fatalf("%d demo blocks printed %d outputs:\n%s", len(blocks), len(outputs)-1, out)
	}
	runs := make([]demoRun, len(blocks))
	for i, b := range blocks {
		runs[i] = demoRun{script: b[1], output: outputs[i]}
	}
	return runs, tmp
}

// demoOutput returns the output of the first demo block whose commands contain s.
func demoOutput(t *testing.T, runs []demoRun, s string) string {
	t.Helper()
	for _, r := range runs {
		if strings.Contains(r.script, s) {
			return r.output
		}
	}
	t.Fatalf("no README demo block runs %q", s)
	return ""
}
