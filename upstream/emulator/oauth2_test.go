package emulator

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	oauthPath    = "/oauth2/default"
	testRedirect = "http://app.test/callback"
	// The PKCE example of RFC 7636 Appendix B.
	testVerifier  = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	testChallenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
)

// authzQuery is a valid authorization request of client; kv overrides or adds parameters (an
// empty value removes one).
func authzQuery(client string, kv ...string) url.Values {
	q := url.Values{
		"client_id": {client}, "response_type": {"code"}, "redirect_uri": {testRedirect},
		"scope": {"openid profile email offline_access"}, "state": {"st-1"}, "nonce": {"n-1"},
	}
	if client != "webapp" {
		q.Set("code_challenge", testChallenge)
		q.Set("code_challenge_method", "S256")
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			q.Del(kv[i])
		} else {
			q.Set(kv[i], kv[i+1])
		}
	}
	return q
}

func authorizeGET(t *testing.T, base string, q url.Values) response {
	t.Helper()
	return call{method: "GET", path: oauthPath + "/v1/authorize?" + q.Encode()}.do(t, base)
}

// signIn posts the login form of authorization request q with a username and password.
func signIn(t *testing.T, base string, q url.Values, username, password string) response {
	t.Helper()
	f := url.Values{}
	for k, v := range q {
		f[k] = v
	}
	f.Set("username", username)
	f.Set("password", password)
	return call{method: "POST", path: oauthPath + "/v1/authorize", body: f}.do(t, base)
}

// location parses the Location of a 302 answer.
func (r response) location(t *testing.T) *url.URL {
	t.Helper()
	r.want(t, http.StatusFound)
	u, err := url.Parse(r.header.Get("Location"))
	if err != nil {
		t.Fatalf("Location %q: %v", r.header.Get("Location"), err)
	}
	return u
}

// authCodeFor signs pat in through authorization request q and returns the code.
func authCodeFor(t *testing.T, base string, q url.Values) string {
	t.Helper()
	authorizeGET(t, base, q).want(t, http.StatusOK)
	loc := signIn(t, base, q, "pat", "pat-password").location(t)
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != q.Get("redirect_uri") {
		t.Fatalf("redirected to %s, want %s", got, q.Get("redirect_uri"))
	}
	if loc.Query().Get("state") != q.Get("state") {
		t.Fatalf("state %q, want %q", loc.Query().Get("state"), q.Get("state"))
	}
	code := loc.Query().Get("code")
	if code == "" {
		t.Fatalf("no code in %s", loc)
	}
	return code
}

func basicAuth(id, secret string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))}}
}

// tokenCall posts form to the token endpoint with header (for Basic auth).
func tokenCall(t *testing.T, base string, header http.Header, form url.Values) response {
	t.Helper()
	return call{method: "POST", path: oauthPath + "/v1/token", header: header, body: form}.do(t, base)
}

// pkceExchange exchanges a code of the public client spa.
func pkceExchange(t *testing.T, base, code string) response {
	t.Helper()
	return tokenCall(t, base, nil, url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {testRedirect},
		"client_id": {"spa"}, "code_verifier": {testVerifier},
	})
}

// userTokens runs the PKCE flow of spa for pat with the default scopes.
func userTokens(t *testing.T, base string) tokenResponse {
	t.Helper()
	return decodeTokens(t, pkceExchange(t, base, authCodeFor(t, base, authzQuery("spa"))).want(t, http.StatusOK))
}

// clientCredentials asks for a client_credentials token with header and the form fields kv.
func clientCredentials(t *testing.T, base string, header http.Header, kv ...string) response {
	t.Helper()
	f := url.Values{"grant_type": {"client_credentials"}}
	for i := 0; i+1 < len(kv); i += 2 {
		f.Set(kv[i], kv[i+1])
	}
	return tokenCall(t, base, header, f)
}

// clientToken is an access token of the system app sysapp.
func clientToken(t *testing.T, base string) string {
	t.Helper()
	return decodeTokens(t, clientCredentials(t, base, sysappAuth()).want(t, http.StatusOK)).AccessToken
}

func sysappAuth() http.Header { return basicAuth("sysapp", "sysapp-secret") }

func decodeTokens(t *testing.T, r response) tokenResponse {
	t.Helper()
	var tr struct {
		TokenType    string `json:"token_type"`
		ExpiresIn    int    `json:"expires_in"`
		AccessToken  string `json:"access_token"`
		Scope        string `json:"scope"`
		IDToken      string `json:"id_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(r.body, &tr); err != nil {
		t.Fatalf("token response: %v: %s", err, r.body)
	}
	return tokenResponse(tr)
}

func refreshCall(t *testing.T, base, rt string) response {
	t.Helper()
	return tokenCall(t, base, nil, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"spa"}})
}

// wantOAuthError fails unless r is an RFC 6749 error with status and code.
func (r response) wantOAuthError(t *testing.T, status int, code string) map[string]any {
	t.Helper()
	r.want(t, status)
	m := r.object(t)
	if m["error"] != code {
		t.Fatalf("error %v, want %q: %s", m["error"], code, r.body)
	}
	if d, _ := m["error_description"].(string); d == "" {
		t.Fatalf("no error_description: %s", r.body)
	}
	return m
}

// verifiedClaims verifies raw against the JWKS the emulator publishes and returns its claims.
func verifiedClaims(t *testing.T, base, raw string) jwt.MapClaims {
	t.Helper()
	var set struct {
		Keys []struct{ Kid, Kty, Alg, N, E string }
	}
	r := call{method: "GET", path: oauthPath + "/v1/keys"}.do(t, base).want(t, http.StatusOK)
	if err := json.Unmarshal(r.body, &set); err != nil {
		t.Fatalf("jwks: %v", err)
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(tok *jwt.Token) (any, error) {
		for _, k := range set.Keys {
			if k.Kid == tok.Header["kid"] && k.Kty == "RSA" && k.Alg == "RS256" {
				return rsaPublic(t, k.N, k.E), nil
			}
		}
		return nil, jwt.ErrTokenUnverifiable
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithExpirationRequired())
	if err != nil {
		t.Fatalf("token does not verify against the JWKS: %v", err)
	}
	return claims
}

func introspect(t *testing.T, base, tok string) map[string]any {
	t.Helper()
	return call{method: "POST", path: oauthPath + "/v1/introspect", header: basicAuth("sysapp", "sysapp-secret"),
		body: url.Values{"token": {tok}}}.do(t, base).want(t, http.StatusOK).object(t)
}

func TestOAuth2Discovery(t *testing.T) {
	_, base := newServer(t, testConfig())
	for _, p := range []string{"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"} {
		m := call{method: "GET", path: "/oauth2/aus123" + p}.do(t, base).want(t, http.StatusOK).object(t)
		iss := base + "/oauth2/aus123"
		if m["issuer"] != iss {
			t.Fatalf("%s: issuer %v, want %s", p, m["issuer"], iss)
		}
		for k, suffix := range map[string]string{
			"authorization_endpoint": "/v1/authorize", "token_endpoint": "/v1/token", "jwks_uri": "/v1/keys",
			"userinfo_endpoint": "/v1/userinfo", "revocation_endpoint": "/v1/revoke",
			"introspection_endpoint": "/v1/introspect", "end_session_endpoint": "/v1/logout",
		} {
			if m[k] != iss+suffix {
				t.Errorf("%s: %s = %v, want %s", p, k, m[k], iss+suffix)
			}
		}
		if jsonText(m["code_challenge_methods_supported"]) != `["S256"]` || jsonText(m["response_types_supported"]) != `["code"]` {
			t.Errorf("%s: code_challenge_methods_supported %v, response_types_supported %v", p, m["code_challenge_methods_supported"], m["response_types_supported"])
		}
	}
	// Every endpoint named in the metadata answers at that URL.
	m := call{method: "GET", path: oauthPath + "/.well-known/openid-configuration"}.do(t, base).object(t)
	jwks := strings.TrimPrefix(m["jwks_uri"].(string), base)
	keys := call{method: "GET", path: jwks}.do(t, base).want(t, http.StatusOK).object(t)
	if ks, _ := keys["keys"].([]any); len(ks) == 0 {
		t.Fatalf("empty JWKS: %v", keys)
	}

	cfg := testConfig()
	cfg.Issuer = "https://acme.login.fabric.test/"
	_, base = newServer(t, cfg)
	m = call{method: "GET", path: oauthPath + "/.well-known/openid-configuration"}.do(t, base).object(t)
	if m["issuer"] != "https://acme.login.fabric.test/oauth2/default" || m["token_endpoint"] != "https://acme.login.fabric.test/oauth2/default/v1/token" {
		t.Fatalf("configured issuer not used: %v", m)
	}
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestOAuth2AuthorizeForm(t *testing.T) {
	_, base := newServer(t, testConfig())
	hostile := `"><script>alert(1)</script>`
	r := authorizeGET(t, base, authzQuery("spa", "state", hostile)).want(t, http.StatusOK)
	body := string(r.body)
	for _, want := range []string{`name="username"`, `name="password"`, `method="post"`, `action="/oauth2/default/v1/authorize"`, `name="code_challenge"`} {
		if !strings.Contains(body, want) {
			t.Errorf("login form lacks %s", want)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Errorf("state is not escaped:\n%s", body)
	}
	if !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || r.header.Get("Cache-Control") != "no-store" ||
		!strings.Contains(r.header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("headers: %v", r.header)
	}
}

func TestOAuth2AuthorizeErrors(t *testing.T) {
	_, base := newServer(t, testConfig())
	// Errors that must not redirect: the redirect URI cannot be trusted.
	for name, q := range map[string]url.Values{
		"unknown client":       authzQuery("nobody"),
		"foreign redirect_uri": authzQuery("spa", "redirect_uri", "https://evil.test/callback"),
		"no redirect_uri":      authzQuery("spa", "redirect_uri", ""),
	} {
		r := authorizeGET(t, base, q)
		if r.status != http.StatusBadRequest || r.header.Get("Location") != "" {
			t.Errorf("%s: status %d, Location %q; want 400 without redirect", name, r.status, r.header.Get("Location"))
		}
	}
	// Errors sent back to the client.
	for _, tc := range []struct {
		name, code string
		q          url.Values
	}{
		{"response_type token", "unsupported_response_type", authzQuery("spa", "response_type", "token")},
		{"no state", "invalid_request", authzQuery("spa", "state", "")},
		{"no scope", "invalid_request", authzQuery("spa", "scope", "")},
		{"plain PKCE", "invalid_request", authzQuery("spa", "code_challenge_method", "plain")},
		{"public client without PKCE", "invalid_request", authzQuery("spa", "code_challenge", "", "code_challenge_method", "")},
	} {
		loc := authorizeGET(t, base, tc.q).location(t)
		got := loc.Query()
		if loc.Host != "app.test" || got.Get("error") != tc.code || got.Get("error_description") == "" || got.Get("state") != tc.q.Get("state") {
			t.Errorf("%s: redirected to %s, want error %s and state %q", tc.name, loc, tc.code, tc.q.Get("state"))
		}
	}
	// The login POST re-validates.
	r := signIn(t, base, authzQuery("spa", "redirect_uri", "https://evil.test/"), "pat", "pat-password")
	if r.status != http.StatusBadRequest || r.header.Get("Location") != "" {
		t.Errorf("POST with a foreign redirect_uri: status %d, Location %q", r.status, r.header.Get("Location"))
	}
}

func TestOAuth2SignInFails(t *testing.T) {
	_, base := newServer(t, testConfig())
	for _, creds := range [][2]string{{"pat", "wrong-secret-xyz"}, {"gone", "gone-password"}, {"nobody", "pw-nobody"}} {
		r := signIn(t, base, authzQuery("spa"), creds[0], creds[1]).want(t, http.StatusUnauthorized)
		if !strings.Contains(string(r.body), "Sign-in failed") || strings.Contains(string(r.body), creds[1]) {
			t.Errorf("%s: want a generic message and no password echoed:\n%s", creds[0], r.body)
		}
		if r.header.Get("Location") != "" {
			t.Errorf("%s: redirected", creds[0])
		}
	}
}

func TestOAuth2CodeFlowPKCE(t *testing.T) {
	_, base := newServer(t, testConfig())
	r := pkceExchange(t, base, authCodeFor(t, base, authzQuery("spa"))).want(t, http.StatusOK)
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	tr := decodeTokens(t, r)
	if tr.TokenType != "Bearer" || tr.ExpiresIn != 1800 || tr.Scope != "openid profile email offline_access" ||
		tr.AccessToken == "" || tr.IDToken == "" || tr.RefreshToken == "" {
		t.Fatalf("token response %s", r.body)
	}
	if strings.Count(tr.RefreshToken, ".") == 2 {
		t.Errorf("refresh token is a JWT; Okta's are opaque")
	}

	at := verifiedClaims(t, base, tr.AccessToken)
	iss := base + "/oauth2/default"
	for k, want := range map[string]any{
		"ver": 1.0, "iss": iss, "aud": "api://default", "cid": "spa", "sub": "pat",
		"userPoolType": "customer", "identityVersion": "v2",
	} {
		if at[k] != want {
			t.Errorf("access token %s = %v, want %v", k, at[k], want)
		}
	}
	if jti, _ := at["jti"].(string); !strings.HasPrefix(jti, "AT.") {
		t.Errorf("jti %v", at["jti"])
	}
	if uid, _ := at["uid"].(string); !strings.HasPrefix(uid, "00u") {
		t.Errorf("uid %v", at["uid"])
	}
	if jsonText(at["scp"]) != `["openid","profile","email","offline_access"]` {
		t.Errorf("scp %v", at["scp"])
	}
	if at["exp"].(float64)-at["iat"].(float64) != 1800 || at["auth_time"] == nil {
		t.Errorf("iat %v exp %v auth_time %v", at["iat"], at["exp"], at["auth_time"])
	}
	if id, _ := at["fabricUserId"].(string); len(id) != 36 {
		t.Errorf("fabricUserId %v", at["fabricUserId"])
	}
	// accounts is a JSON string holding an object keyed by the account id.
	s, ok := at["accounts"].(string)
	if !ok {
		t.Fatalf("accounts is %T, want a JSON-encoded string", at["accounts"])
	}
	var accounts map[string]map[string]any
	if err := json.Unmarshal([]byte(s), &accounts); err != nil {
		t.Fatalf("accounts %q: %v", s, err)
	}
	acct := accounts[testAccount]
	if len(accounts) != 1 || acct["id"] != testAccount || acct["tenantId"] != testAccount || jsonText(acct["roles"]) != `["customer"]` {
		t.Errorf("accounts %s", s)
	}
	if v, ok := acct["logoUrl"]; !ok || v != nil {
		t.Errorf("logoUrl %v, want null", v)
	}

	id := verifiedClaims(t, base, tr.IDToken)
	sum := sha256.Sum256([]byte(tr.AccessToken))
	for k, want := range map[string]any{
		"sub": at["uid"], "aud": "spa", "iss": iss, "nonce": "n-1", "email": "pat@example.com", "ver": 1.0,
		"auth_time": at["auth_time"], "at_hash": base64.RawURLEncoding.EncodeToString(sum[:16]),
	} {
		if id[k] != want {
			t.Errorf("id token %s = %v, want %v", k, id[k], want)
		}
	}
	if jti, _ := id["jti"].(string); !strings.HasPrefix(jti, "ID.") || jsonText(id["amr"]) != `["pwd"]` {
		t.Errorf("id token jti %v amr %v", id["jti"], id["amr"])
	}
}

func TestOAuth2CodeExchangeFailures(t *testing.T) {
	_, base := newServer(t, testConfig())
	exchange := func(code string, kv ...string) response {
		f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {testRedirect}, "client_id": {"spa"}, "code_verifier": {testVerifier}}
		for i := 0; i+1 < len(kv); i += 2 {
			f.Set(kv[i], kv[i+1])
		}
		return tokenCall(t, base, nil, f)
	}
	t.Run("verifier mismatch", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		exchange(code, "code_verifier", testVerifier+"x").wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("no verifier", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		tokenCall(t, base, nil, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {testRedirect}, "client_id": {"spa"}}).
			wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("wrong redirect_uri", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		exchange(code, "redirect_uri", "http://app.test/other").wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("unknown code", func(t *testing.T) {
		exchange("no-such-code").wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("reuse revokes the first exchange", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		tr := decodeTokens(t, exchange(code).want(t, http.StatusOK))
		exchange(code).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
		if introspect(t, base, tr.AccessToken)["active"] != false {
			t.Errorf("access token of a reused code is still active")
		}
		refreshCall(t, base, tr.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("expired code", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		setClock(t, base, "61s")
		t.Cleanup(func() { setClock(t, base, "0s") })
		exchange(code).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("code of another client", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		tokenCall(t, base, basicAuth("webapp", "webapp-secret"), url.Values{
			"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {testRedirect}, "code_verifier": {testVerifier},
		}).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("public client sending a secret", func(t *testing.T) {
		code := authCodeFor(t, base, authzQuery("spa"))
		exchange(code, "client_secret", "guess").wantOAuthError(t, http.StatusUnauthorized, "invalid_client")
	})
}

func TestOAuth2ConfidentialClient(t *testing.T) {
	cfg := testConfig()
	// A secret with characters that RFC 6749 §2.3.1 form-encodes inside the Basic credentials.
	cfg.Clients = append(cfg.Clients, Client{ID: "odd:app", Secret: "s3cr:t+%/ü"})
	_, base := newServer(t, cfg)
	exchange := func(header http.Header, form url.Values) response {
		code := authCodeFor(t, base, authzQuery("webapp", "scope", "openid"))
		form.Set("grant_type", "authorization_code")
		form.Set("code", code)
		form.Set("redirect_uri", testRedirect)
		return tokenCall(t, base, header, form)
	}

	tr := decodeTokens(t, exchange(basicAuth("webapp", "webapp-secret"), url.Values{}).want(t, http.StatusOK))
	if tr.IDToken == "" || tr.RefreshToken != "" || tr.Scope != "openid" {
		t.Errorf("without offline_access: id token %t, refresh token %t, scope %q", tr.IDToken != "", tr.RefreshToken != "", tr.Scope)
	}
	exchange(nil, url.Values{"client_id": {"webapp"}, "client_secret": {"webapp-secret"}}).want(t, http.StatusOK)

	for name, header := range map[string]http.Header{
		"bad secret":     basicAuth("webapp", "wrong"),
		"unknown client": basicAuth("nobody", "webapp-secret"),
		"no client auth": nil,
	} {
		r := exchange(header, url.Values{})
		r.wantOAuthError(t, http.StatusUnauthorized, "invalid_client")
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("%s: WWW-Authenticate %q", name, r.header.Get("WWW-Authenticate"))
		}
	}
	exchange(nil, url.Values{"client_id": {"webapp"}}).wantOAuthError(t, http.StatusUnauthorized, "invalid_client")

	id, secret := url.QueryEscape("odd:app"), url.QueryEscape("s3cr:t+%/ü")
	clientCredentials(t, base, basicAuth(id, secret)).want(t, http.StatusOK)
	clientCredentials(t, base, basicAuth(id, "s3cr:t+%/ü")).wantOAuthError(t, http.StatusUnauthorized, "invalid_client")
}

func TestOAuth2ClientCredentials(t *testing.T) {
	_, base := newServer(t, testConfig())
	r := clientCredentials(t, base, sysappAuth(), "scope", "s2s").want(t, http.StatusOK)
	m := r.object(t)
	if len(m) != 4 || m["token_type"] != "Bearer" || m["expires_in"] != 600.0 || m["scope"] != "s2s" || m["access_token"] == "" {
		t.Fatalf("client_credentials answer %s, want exactly token_type, expires_in 600, access_token, scope s2s", r.body)
	}
	c := verifiedClaims(t, base, m["access_token"].(string))
	for k, want := range map[string]any{"ver": 1.0, "iss": base + "/oauth2/default", "aud": "api://default", "cid": "sysapp", "sub": "sysapp"} {
		if c[k] != want {
			t.Errorf("%s = %v, want %v", k, c[k], want)
		}
	}
	if jsonText(c["scp"]) != `["s2s"]` || c["uid"] != nil || c["exp"].(float64)-c["iat"].(float64) != 600 {
		t.Errorf("claims %v", c)
	}
	if jti, _ := c["jti"].(string); !strings.HasPrefix(jti, "AT.") {
		t.Errorf("jti %v", c["jti"])
	}
	// The scope defaults to s2s.
	if m := clientCredentials(t, base, sysappAuth()).want(t, http.StatusOK).object(t); m["scope"] != "s2s" {
		t.Errorf("default scope %v", m["scope"])
	}
	clientCredentials(t, base, nil, "client_id", "spa").wantOAuthError(t, http.StatusBadRequest, "unauthorized_client")
	clientCredentials(t, base, sysappAuth(), "scope", "openid").wantOAuthError(t, http.StatusBadRequest, "invalid_scope")
	clientCredentials(t, base, basicAuth("sysapp", "bad")).wantOAuthError(t, http.StatusUnauthorized, "invalid_client")
}

func TestOAuth2TokenRequestErrors(t *testing.T) {
	_, base := newServer(t, testConfig())
	sys := sysappAuth()
	tokenCall(t, base, sys, url.Values{}).wantOAuthError(t, http.StatusBadRequest, "invalid_request")
	tokenCall(t, base, sys, url.Values{"grant_type": {"password"}}).wantOAuthError(t, http.StatusBadRequest, "unsupported_grant_type")
	tokenCall(t, base, sys, url.Values{"grant_type": {"client_credentials", "client_credentials"}}).wantOAuthError(t, http.StatusBadRequest, "invalid_request")
	tokenCall(t, base, sys, url.Values{"grant_type": {"authorization_code"}}).wantOAuthError(t, http.StatusBadRequest, "invalid_request")
	tokenCall(t, base, sys, url.Values{"grant_type": {"refresh_token"}}).wantOAuthError(t, http.StatusBadRequest, "invalid_request")
	for _, ct := range []string{"application/json", "text/plain"} {
		m := call{method: "POST", path: oauthPath + "/v1/token", header: with(sys, "Content-Type", ct), body: "grant_type=client_credentials"}.do(t, base).
			wantOAuthError(t, http.StatusBadRequest, "invalid_request")
		if !strings.Contains(m["error_description"].(string), "Content-Type") {
			t.Errorf("%s: %v", ct, m["error_description"])
		}
	}
}

func TestOAuth2RefreshRotation(t *testing.T) {
	_, base := newServer(t, testConfig())
	first := userTokens(t, base)
	exp := introspect(t, base, first.RefreshToken)["exp"]

	// An hour later, the rotated token must still expire when the first one did.
	setClock(t, base, "1h")
	second := decodeTokens(t, refreshCall(t, base, first.RefreshToken).want(t, http.StatusOK))
	if second.RefreshToken == "" || second.RefreshToken == first.RefreshToken || second.AccessToken == "" || second.IDToken == "" {
		t.Fatalf("refresh did not rotate: %+v", second)
	}
	if got := introspect(t, base, second.RefreshToken); got["active"] != true || got["exp"] != exp {
		t.Errorf("rotated refresh token exp %v, want the original %v", got["exp"], exp)
	}
	at := verifiedClaims(t, base, second.AccessToken)
	if at["sub"] != "pat" || at["iat"].(float64) < float64(time.Now().Add(59*time.Minute).Unix()) {
		t.Errorf("refreshed access token %v", at)
	}

	before := calls(t, base).RefreshTokenReuse
	m := refreshCall(t, base, first.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	if m["error_description"] != "The refresh token is invalid or expired." {
		t.Errorf("error_description %q", m["error_description"])
	}
	if got := calls(t, base).RefreshTokenReuse; got != before+1 {
		t.Errorf("refresh_token_reuse %d, want %d", got, before+1)
	}
	if introspect(t, base, first.RefreshToken)["active"] != false {
		t.Errorf("a rotated-away refresh token introspects as active")
	}
	refreshCall(t, base, second.RefreshToken).want(t, http.StatusOK)

	// Another client cannot use the token, and its attempt does not use it up.
	third := userTokens(t, base)
	tokenCall(t, base, basicAuth("webapp", "webapp-secret"), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {third.RefreshToken}}).
		wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	refreshCall(t, base, third.RefreshToken).want(t, http.StatusOK)

	// Past its lifetime (45 days) the refresh token is refused.
	fourth := userTokens(t, base)
	setClock(t, base, "1081h")
	refreshCall(t, base, fourth.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
}

func TestOAuth2RefreshWithoutRotation(t *testing.T) {
	cfg := testConfig()
	cfg.KeepRefreshTokens = true
	_, base := newServer(t, cfg)
	rt := userTokens(t, base).RefreshToken
	for range 3 {
		if got := decodeTokens(t, refreshCall(t, base, rt).want(t, http.StatusOK)); got.RefreshToken != rt {
			t.Fatalf("refresh token changed without rotation")
		}
	}
	if n := calls(t, base).RefreshTokenReuse; n != 0 {
		t.Errorf("refresh_token_reuse %d without rotation", n)
	}
}

func TestOAuth2Revoke(t *testing.T) {
	_, base := newServer(t, testConfig())
	revoke := func(header http.Header, form url.Values) response {
		return call{method: "POST", path: oauthPath + "/v1/revoke", header: header, body: form}.do(t, base)
	}
	tr := userTokens(t, base)
	// Another client's revocation is accepted and does nothing.
	revoke(basicAuth("webapp", "webapp-secret"), url.Values{"token": {tr.RefreshToken}}).want(t, http.StatusOK)
	refreshCall(t, base, tr.RefreshToken).want(t, http.StatusOK)

	tr = userTokens(t, base)
	r := revoke(nil, url.Values{"token": {tr.RefreshToken}, "token_type_hint": {"refresh_token"}, "client_id": {"spa"}}).want(t, http.StatusOK)
	if len(r.body) != 0 {
		t.Errorf("revoke answered a body: %s", r.body)
	}
	refreshCall(t, base, tr.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	if introspect(t, base, tr.AccessToken)["active"] != false {
		t.Errorf("access token of a revoked refresh token is still active")
	}

	tr = userTokens(t, base)
	revoke(nil, url.Values{"token": {tr.AccessToken}, "client_id": {"spa"}}).want(t, http.StatusOK)
	if introspect(t, base, tr.AccessToken)["active"] != false {
		t.Errorf("revoked access token is still active")
	}
	refreshCall(t, base, tr.RefreshToken).want(t, http.StatusOK)

	revoke(nil, url.Values{"token": {"no-such-token"}, "client_id": {"spa"}}).want(t, http.StatusOK)
	revoke(basicAuth("sysapp", "wrong"), url.Values{"token": {"x"}}).wantOAuthError(t, http.StatusUnauthorized, "invalid_client")
	revoke(nil, url.Values{"client_id": {"spa"}}).wantOAuthError(t, http.StatusBadRequest, "invalid_request")
}

func TestOAuth2Userinfo(t *testing.T) {
	_, base := newServer(t, testConfig())
	tr := userTokens(t, base)
	bearerOf := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	for _, method := range []string{"GET", "POST"} {
		m := call{method: method, path: oauthPath + "/v1/userinfo", header: bearerOf(tr.AccessToken)}.do(t, base).want(t, http.StatusOK).object(t)
		at := verifiedClaims(t, base, tr.AccessToken)
		for k, want := range map[string]any{
			"sub": at["uid"], "name": "Pat Kake", "given_name": "Pat", "family_name": "Kake",
			"email": "pat@example.com", "preferred_username": "pat",
		} {
			if m[k] != want {
				t.Errorf("%s userinfo %s = %v, want %v", method, k, m[k], want)
			}
		}
	}

	sys := clientToken(t, base)
	noOpenID := decodeTokens(t, tokenCall(t, base, basicAuth("webapp", "webapp-secret"), url.Values{
		"grant_type": {"authorization_code"}, "redirect_uri": {testRedirect},
		"code": {authCodeFor(t, base, authzQuery("webapp", "scope", "email"))},
	}).want(t, http.StatusOK))
	if noOpenID.IDToken != "" {
		t.Errorf("id token issued without openid")
	}
	for name, tok := range map[string]string{"client token": sys, "no openid": noOpenID.AccessToken} {
		r := call{method: "GET", path: oauthPath + "/v1/userinfo", header: bearerOf(tok)}.do(t, base)
		r.wantOAuthError(t, http.StatusForbidden, "insufficient_scope")
		if !strings.Contains(r.header.Get("WWW-Authenticate"), "insufficient_scope") {
			t.Errorf("%s: WWW-Authenticate %q", name, r.header.Get("WWW-Authenticate"))
		}
	}
	for name, h := range map[string]http.Header{"missing": nil, "garbage": bearerOf("garbage"), "id token": bearerOf(tr.IDToken)} {
		r := call{method: "GET", path: oauthPath + "/v1/userinfo", header: h}.do(t, base)
		r.wantOAuthError(t, http.StatusUnauthorized, "invalid_token")
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", name, r.header.Get("WWW-Authenticate"))
		}
	}

	// A deactivated user's tokens stop working at once.
	call{method: "PATCH", path: ControlPrefix + "users/pat", body: map[string]bool{"active": false}}.do(t, base).want(t, http.StatusOK)
	call{method: "GET", path: oauthPath + "/v1/userinfo", header: bearerOf(tr.AccessToken)}.do(t, base).wantOAuthError(t, http.StatusUnauthorized, "invalid_token")
	refreshCall(t, base, tr.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
}

func TestOAuth2Introspect(t *testing.T) {
	_, base := newServer(t, testConfig())
	tr := userTokens(t, base)
	at := verifiedClaims(t, base, tr.AccessToken)
	m := introspect(t, base, tr.AccessToken)
	for k, want := range map[string]any{
		"active": true, "token_type": "Bearer", "scope": "openid profile email offline_access", "client_id": "spa",
		"username": "pat", "sub": "pat", "uid": at["uid"], "exp": at["exp"], "iat": at["iat"], "aud": "api://default",
		"iss": base + "/oauth2/default", "jti": at["jti"],
	} {
		if m[k] != want {
			t.Errorf("introspect %s = %v, want %v", k, m[k], want)
		}
	}
	if rt := introspect(t, base, tr.RefreshToken); rt["active"] != true || rt["client_id"] != "spa" || rt["username"] != "pat" {
		t.Errorf("refresh token introspection %v", rt)
	}
	if c := introspect(t, base, clientToken(t, base)); c["active"] != true || c["sub"] != "sysapp" || c["username"] != nil {
		t.Errorf("client token introspection %v", c)
	}
	for _, tok := range []string{"garbage", tr.AccessToken[:len(tr.AccessToken)-4] + "AAAA"} {
		if m := introspect(t, base, tok); len(m) != 1 || m["active"] != false {
			t.Errorf("introspect of an invalid token: %v", m)
		}
	}
	setClock(t, base, "31m")
	if introspect(t, base, tr.AccessToken)["active"] != false {
		t.Errorf("expired access token is active")
	}
	call{method: "POST", path: oauthPath + "/v1/introspect", body: url.Values{"token": {tr.AccessToken}}}.do(t, base).
		wantOAuthError(t, http.StatusUnauthorized, "invalid_client")
}

func TestOAuth2Logout(t *testing.T) {
	_, base := newServer(t, testConfig())
	logout := func(q url.Values) response {
		return call{method: "GET", path: oauthPath + "/v1/logout?" + q.Encode()}.do(t, base)
	}
	tr := userTokens(t, base)
	// The redirect needs a verified hint: logout is no open redirect.
	logout(url.Values{"post_logout_redirect_uri": {"http://app.test/"}}).wantOAuthError(t, http.StatusBadRequest, "invalid_request")
	logout(url.Values{"id_token_hint": {tr.IDToken}, "post_logout_redirect_uri": {"https://evil.test/"}}).
		wantOAuthError(t, http.StatusBadRequest, "invalid_request")
	refreshCall(t, base, tr.RefreshToken).want(t, http.StatusOK)

	tr = userTokens(t, base)
	loc := logout(url.Values{"id_token_hint": {tr.IDToken}, "post_logout_redirect_uri": {"http://app.test/bye"}, "state": {"s-9"}}).location(t)
	if loc.String() != "http://app.test/bye?state=s-9" {
		t.Errorf("redirected to %s", loc)
	}
	refreshCall(t, base, tr.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
	if introspect(t, base, tr.AccessToken)["active"] != false {
		t.Errorf("access token survived logout")
	}

	// Only an ID token names a session.
	tr = userTokens(t, base)
	logout(url.Values{}).want(t, http.StatusOK)
	logout(url.Values{"id_token_hint": {tr.AccessToken}}).want(t, http.StatusOK)
	refreshCall(t, base, tr.RefreshToken).want(t, http.StatusOK)
	// An expired ID token still names the session to end.
	tr = userTokens(t, base)
	setClock(t, base, "2h")
	logout(url.Values{"id_token_hint": {tr.IDToken}}).want(t, http.StatusOK)
	refreshCall(t, base, tr.RefreshToken).wantOAuthError(t, http.StatusBadRequest, "invalid_grant")
}

func TestOAuth2GrantCountersAndFaults(t *testing.T) {
	e, base := newServer(t, testConfig())
	for _, g := range tokenGrants {
		if !slices.Contains(e.Endpoints(), "oauth2.token."+g) {
			t.Errorf("endpoint oauth2.token.%s is not registered", g)
		}
	}
	tr := userTokens(t, base)
	addFault(t, base, Fault{Endpoint: "oauth2.token.refresh_token", Status: http.StatusServiceUnavailable, Times: 1})
	refreshCall(t, base, tr.RefreshToken).wantOAuthError(t, http.StatusServiceUnavailable, "temporarily_unavailable")
	clientCredentials(t, base, sysappAuth()).want(t, http.StatusOK)
	// The fault answered before the token was looked at: it is still good.
	refreshCall(t, base, tr.RefreshToken).want(t, http.StatusOK)

	addFault(t, base, Fault{Endpoint: "oauth2.token.client_credentials", Reject: true, Times: 1})
	clientCredentials(t, base, sysappAuth()).
		wantOAuthError(t, http.StatusUnauthorized, "invalid_client")

	// A fault matching both the endpoint and its grant applies once per call, not twice.
	addFault(t, base, Fault{Endpoint: "oauth2.*", Status: http.StatusBadGateway, Times: 1})
	clientCredentials(t, base, sysappAuth()).wantOAuthError(t, http.StatusBadGateway, "server_error")
	clientCredentials(t, base, sysappAuth()).want(t, http.StatusOK)

	c := calls(t, base).Calls
	for name, want := range map[string]int{
		"oauth2.token": 7, "oauth2.token.authorization_code": 1, "oauth2.token.refresh_token": 2,
		"oauth2.token.client_credentials": 4, "oauth2.authorize": 2,
	} {
		if c[name] != want {
			t.Errorf("calls[%s] = %d, want %d", name, c[name], want)
		}
	}
}
