package emulator

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func eceLogin(t *testing.T, base, username, password string) response {
	t.Helper()
	return call{method: "POST", path: eceAuthPath + "/_login", body: map[string]string{"username": username, "password": password}}.do(t, base)
}

// eceSession logs pat in and returns the token.
func eceSession(t *testing.T, base string) string {
	t.Helper()
	return eceLogin(t, base, "pat", "pat-password").want(t, http.StatusOK).object(t)["token"].(string)
}

func eceRefreshCall(t *testing.T, base string, header http.Header) response {
	t.Helper()
	return call{method: "POST", path: eceRefreshURL, header: header}.do(t, base)
}

func eceAuthInfoCall(t *testing.T, base, tok string) response {
	t.Helper()
	return call{method: "GET", path: eceAuthPath, header: bearerHeader(tok)}.do(t, base)
}

// wantECEError fails unless r is a BasicFailedReply with status and code, the code also in the
// x-cloud-error-codes header.
func (r response) wantECEError(t *testing.T, status int, code string) string {
	t.Helper()
	r.want(t, status)
	if h := r.header.Get("x-cloud-error-codes"); h != code {
		t.Errorf("x-cloud-error-codes %q, want %q", h, code)
	}
	errs, _ := r.object(t)["errors"].([]any)
	if len(errs) != 1 {
		t.Fatalf("errors %s", r.body)
	}
	e, _ := errs[0].(map[string]any)
	if e["code"] != code {
		t.Fatalf("error code %v, want %q", e["code"], code)
	}
	msg, _ := e["message"].(string)
	if msg == "" {
		t.Fatalf("no message: %s", r.body)
	}
	return msg
}

// wantTokenResponse checks a TokenResponse and returns the token.
func (r response) wantTokenResponse(t *testing.T, base string) string {
	t.Helper()
	m := r.want(t, http.StatusOK).object(t)
	tok, _ := m["token"].(string)
	claims := verifiedClaims(t, base, tok)
	exp, err := time.Parse(time.RFC3339, m["session_expiration_time"].(string))
	if err != nil || exp.Unix() != int64(claims["exp"].(float64)) || exp.Location() != time.UTC {
		t.Errorf("session_expiration_time %v (%v), want the token's exp %v in UTC", m["session_expiration_time"], err, claims["exp"])
	}
	return tok
}

func TestECELogin(t *testing.T) {
	_, base := newServer(t, testConfig())
	tok := eceLogin(t, base, "pat", "pat-password").wantTokenResponse(t, base)
	c := verifiedClaims(t, base, tok)
	if c["sub"] != "pat" || c["iss"] != "ece-emulator" || c["sid"] == "" || c["exp"].(float64)-c["iat"].(float64) != 1800 {
		t.Errorf("claims %v", c)
	}

	for _, creds := range [][2]string{{"pat", "wrong"}, {"gone", "gone-password"}, {"nobody", "x"}} {
		r := eceLogin(t, base, creds[0], creds[1])
		if msg := r.wantECEError(t, http.StatusUnauthorized, "root.unauthenticated"); msg != "The supplied authentication is invalid." {
			t.Errorf("message %q", msg)
		}
	}
	for _, body := range []any{`{"username":"pat"`, map[string]string{"username": "pat"}, `["pat"]`, ""} {
		call{method: "POST", path: eceAuthPath + "/_login", body: body}.do(t, base).wantECEError(t, http.StatusBadRequest, "root.malformed_request")
	}

	// With login_state the token travels in the fragment of a redirect.
	r := call{method: "POST", path: eceAuthPath + "/_login", body: map[string]any{
		"username": "pat", "password": "pat-password", "login_state": map[string]string{"path": "/deployments?x=1"},
	}}.do(t, base).want(t, http.StatusFound)
	loc := r.header.Get("Location")
	frag, ok := strings.CutPrefix(loc, "/sso/token#")
	tok, state, _ := strings.Cut(frag, "?state=")
	if !ok || state != url.QueryEscape("/deployments?x=1") {
		t.Fatalf("Location %q", loc)
	}
	eceAuthInfoCall(t, base, tok).want(t, http.StatusOK)
}

func TestECERefresh(t *testing.T) {
	_, base := newServer(t, testConfig())
	first := eceSession(t, base)
	setClock(t, base, "10m")
	second := eceRefreshCall(t, base, bearerHeader(first)).wantTokenResponse(t, base)
	if second == first {
		t.Fatalf("refresh returned the same token")
	}
	a, b := verifiedClaims(t, base, first), verifiedClaims(t, base, second)
	if a["sid"] != b["sid"] || b["exp"].(float64)-a["exp"].(float64) < 600 {
		t.Errorf("refreshed token: sid %v→%v, exp %v→%v; want the same session with a fresh lifetime", a["sid"], b["sid"], a["exp"], b["exp"])
	}

	// The old token cannot refresh again, but still authenticates until it expires.
	before := calls(t, base).RefreshTokenReuse
	msg := eceRefreshCall(t, base, bearerHeader(first)).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")
	if msg != "The authentication token is invalid or expired." {
		t.Errorf("message %q", msg)
	}
	if calls(t, base).RefreshTokenReuse != before+1 {
		t.Errorf("reuse not counted")
	}
	eceAuthInfoCall(t, base, first).want(t, http.StatusOK)
	third := eceRefreshCall(t, base, bearerHeader(second)).wantTokenResponse(t, base)

	// Expired: 30 minutes after it was issued the token can no longer refresh.
	setClock(t, base, "45m")
	eceRefreshCall(t, base, bearerHeader(third)).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")
	eceAuthInfoCall(t, base, third).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")

	for _, h := range []http.Header{nil, bearerHeader("garbage"), {"Authorization": {third}}, bearerHeader(userTokens(t, base).AccessToken)} {
		eceRefreshCall(t, base, h).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")
	}
}

func TestECELogout(t *testing.T) {
	_, base := newServer(t, testConfig())
	logout := func(h http.Header) {
		t.Helper()
		r := call{method: "POST", path: eceAuthPath + "/_logout", header: h}.do(t, base).want(t, http.StatusOK)
		if string(r.body) != "{}" {
			t.Errorf("logout answered %s", r.body)
		}
	}
	first := eceSession(t, base)
	second := eceRefreshCall(t, base, bearerHeader(first)).wantTokenResponse(t, base)
	logout(bearerHeader(first))
	// Every token of the session is dead, the refreshed one included.
	eceRefreshCall(t, base, bearerHeader(second)).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")
	eceAuthInfoCall(t, base, second).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")

	other := eceSession(t, base)
	logout(http.Header{"Cookie": {"ec-sso-session-id=" + other}})
	eceAuthInfoCall(t, base, other).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")

	// Without credentials, or with unknown ones, logout still answers 200 and ends nothing else.
	kept := eceSession(t, base)
	logout(nil)
	logout(bearerHeader("garbage"))
	eceAuthInfoCall(t, base, kept).want(t, http.StatusOK)
}

func TestECEAuthInfoAndMethods(t *testing.T) {
	_, base := newServer(t, testConfig())
	tok := eceSession(t, base)
	m := eceAuthInfoCall(t, base, tok).want(t, http.StatusOK).object(t)
	exp := verifiedClaims(t, base, tok)["exp"].(float64)
	at, err := time.Parse(time.RFC3339, m["expires_at"].(string))
	if m["has_elevated_permissions"] != false || m["refresh_token_url"] != "/api/v1/users/auth/_refresh" || err != nil || at.Unix() != int64(exp) {
		t.Errorf("auth info %v", m)
	}
	call{method: "GET", path: eceAuthPath}.do(t, base).wantECEError(t, http.StatusUnauthorized, "root.unauthorized")

	r := call{method: "GET", path: eceAuthPath + "/methods"}.do(t, base).want(t, http.StatusOK)
	if string(r.body) != `{"openid":false,"password":true,"saml":false,"sso_methods":[]}` {
		t.Errorf("methods %s", r.body)
	}
}

func TestECEFaults(t *testing.T) {
	_, base := newServer(t, testConfig())
	tok := eceSession(t, base)
	for _, tc := range []struct {
		endpoint string
		status   int
		code     string
	}{
		{"ece.refresh", http.StatusNotImplemented, "authc.no_authentication_cluster"},
		{"ece.refresh", http.StatusBadGateway, "authc.authentication_cluster_error"},
		{"ece.login", http.StatusNotImplemented, "authc.no_authentication_cluster"},
		{"ece.login", http.StatusBadGateway, "authc.authentication_cluster_error"},
	} {
		addFault(t, base, Fault{Endpoint: tc.endpoint, Status: tc.status, Times: 1})
		var r response
		if tc.endpoint == "ece.refresh" {
			r = eceRefreshCall(t, base, bearerHeader(tok))
		} else {
			r = eceLogin(t, base, "pat", "pat-password")
		}
		r.wantECEError(t, tc.status, tc.code)
	}
	// The faults answered before the token was looked at: it can still refresh.
	eceRefreshCall(t, base, bearerHeader(tok)).wantTokenResponse(t, base)
	c := calls(t, base).Calls
	if c["ece.refresh"] != 3 || c["ece.login"] != 3 {
		t.Errorf("calls %v", c)
	}
}
