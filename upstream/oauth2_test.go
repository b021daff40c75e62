package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sitegate/sitegate/upstream/emulator"
)

const (
	oauthRedirect = "http://app.test/callback"
	sysSecret     = "sysapp-secret"
	webSecret     = "webapp-secret"
	// oddSecret needs the form encoding of RFC 6749 §2.3.1 in a Basic header.
	oddID, oddSecret = "odd app:1", "s3:cr%t +/="
)

// oauthIdentity starts the emulator with OAuth2 clients (sysapp, spa, webapp, odd app:1) and the
// users pat and gone; it returns the base URL and the issuer of the default server.
func oauthIdentity(t *testing.T, cfg emulator.Config) (base, issuer string) {
	t.Helper()
	cfg.Users = []emulator.User{
		{Username: "pat", Password: "pat-password", Account: account, FirstName: "Pat", LastName: "Kake", Roles: []string{"customer", "buyer"}},
		{Username: "gone", Password: "gone-password", Account: account, Deactivated: true},
	}
	cfg.Clients = []emulator.Client{
		{ID: "sysapp", Secret: sysSecret},
		{ID: "spa"},
		{ID: "webapp", Secret: webSecret, RedirectURIs: []string{oauthRedirect}},
		{ID: oddID, Secret: oddSecret},
	}
	e, err := emulator.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return srv.URL, srv.URL + "/oauth2/default"
}

func newOAuth2(t *testing.T, o OAuth2Options) *OAuth2 {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	c, err := NewOAuth2(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// oauthCalls returns the emulator's call counters.
func oauthCalls(t *testing.T, base string) map[string]int {
	t.Helper()
	res, err := http.Get(base + emulator.ControlPrefix + "calls")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var c emulator.Calls
	if err := json.NewDecoder(res.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c.Calls
}

// oauthSignIn plays the browser: it opens authURL (the hosted login form), posts the credentials
// with the authorization request, and returns the code and state of the redirect to oauthRedirect.
func oauthSignIn(t *testing.T, authURL, username, password string) (code, state string) {
	t.Helper()
	res, err := http.Get(authURL)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("login form: %v %v", err, res)
	}
	res.Body.Close()
	u, _ := url.Parse(authURL)
	form := u.Query()
	form.Set("username", username)
	form.Set("password", password)
	u.RawQuery = ""
	browser := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err = browser.PostForm(u.String(), form)
	if err != nil || res.StatusCode != http.StatusFound {
		t.Fatalf("sign in: %v %v", err, res)
	}
	res.Body.Close()
	loc, err := url.Parse(res.Header.Get("Location"))
	if err != nil || loc.Scheme+"://"+loc.Host+loc.Path != oauthRedirect || loc.Query().Get("code") == "" {
		t.Fatalf("redirected to %q", res.Header.Get("Location"))
	}
	return loc.Query().Get("code"), loc.Query().Get("state")
}

// pkceLogin signs pat in through c (a PKCE login with offline_access) and exchanges the code.
func pkceLogin(t *testing.T, c *OAuth2) *Tokens {
	t.Helper()
	ctx := context.Background()
	verifier, challenge, err := NewPKCE()
	if err != nil {
		t.Fatal(err)
	}
	authURL, err := c.AuthCodeURL(ctx, "st-1", challenge, oauthRedirect, []string{"openid", "offline_access"})
	if err != nil {
		t.Fatal(err)
	}
	code, _ := oauthSignIn(t, authURL, "pat", "pat-password")
	tok, err := c.Exchange(ctx, code, verifier, oauthRedirect)
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	return tok
}

// wantCode checks err is an *Error with status and code.
func wantCode(t *testing.T, err error, status int, code string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code {
		t.Fatalf("error %v, want status %d code %q", err, status, code)
	}
}

// fakeJWT is an unsigned JWT with claims.
func fakeJWT(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString(b) + ".sig"
}

func TestNewPKCE(t *testing.T) {
	v, c, err := NewPKCE()
	if err != nil {
		t.Fatal(err)
	}
	if len(v) < 43 || len(v) > 128 || strings.Trim(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") != "" {
		t.Errorf("verifier %q is not 43-128 unreserved characters", v)
	}
	sum := sha256.Sum256([]byte(v))
	if c != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Errorf("challenge %q is not the S256 of the verifier", c)
	}
	if v2, _, _ := NewPKCE(); v2 == v {
		t.Error("two verifiers are equal")
	}
}

func TestNewOAuth2(t *testing.T) {
	for name, o := range map[string]OAuth2Options{
		"no issuer":         {ClientID: "spa"},
		"relative issuer":   {Issuer: "acme.login.fabric.inc/oauth2/default", ClientID: "spa"},
		"no client id":      {Issuer: "https://acme.login.fabric.inc/oauth2/default"},
		"relative token":    {Issuer: "https://acme.login.fabric.inc/oauth2/default", ClientID: "spa", TokenURL: "/v1/token"},
		"ftp revocation":    {Issuer: "https://acme.login.fabric.inc/oauth2/default", ClientID: "spa", RevokeURL: "ftp://x/revoke"},
		"authorize no host": {Issuer: "https://acme.login.fabric.inc/oauth2/default", ClientID: "spa", AuthorizeURL: "https:///authorize"},
	} {
		if _, err := NewOAuth2(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestOAuth2Discovery(t *testing.T) {
	base, issuer := oauthIdentity(t, emulator.Config{})
	ctx := context.Background()
	c := newOAuth2(t, OAuth2Options{Issuer: issuer + "/", ClientID: "spa"})
	if n := oauthCalls(t, base)["oauth2.discovery"]; n != 0 {
		t.Fatalf("NewOAuth2 fetched discovery %d times", n)
	}

	// A failure is not kept: the next call asks again.
	control(t, base, "POST", "faults", `{"endpoint":"oauth2.discovery","status":503,"times":1}`)
	_, err := c.AuthCodeURL(ctx, "st", "ch", oauthRedirect, []string{"openid"})
	wantKind(t, err, ErrUnavailable)
	wantCode(t, err, 503, "")
	authURL, err := c.AuthCodeURL(ctx, "st-1", "challenge-1", oauthRedirect, []string{"openid", "offline_access"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(authURL)
	q := u.Query()
	if got := u.Scheme + "://" + u.Host + u.Path; got != issuer+"/v1/authorize" {
		t.Errorf("authorize endpoint %s", got)
	}
	for k, want := range map[string]string{
		"response_type": "code", "client_id": "spa", "redirect_uri": oauthRedirect, "scope": "openid offline_access",
		"state": "st-1", "code_challenge_method": "S256", "code_challenge": "challenge-1",
	} {
		if q.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, q.Get(k), want)
		}
	}
	// The document is kept once read.
	for range 3 {
		if _, err := c.AuthCodeURL(ctx, "st", "ch", oauthRedirect, []string{"openid"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := oauthCalls(t, base)["oauth2.discovery"]; n != 2 {
		t.Errorf("discovery fetched %d times, want 2 (one failure, one success)", n)
	}

	// Concurrent first calls share one fetch, which a caller's cancellation does not abort.
	control(t, base, "POST", "faults", `{"endpoint":"oauth2.discovery","latency":"300ms"}`)
	c = newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "spa"})
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = c.AuthCodeURL(short, "st", "ch", oauthRedirect, []string{"openid"})
	wantKind(t, err, ErrUnavailable)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 10 {
		wg.Go(func() {
			if _, err := c.AuthCodeURL(ctx, "st", "ch", oauthRedirect, []string{"openid"}); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := oauthCalls(t, base)["oauth2.discovery"]; failed.Load() != 0 || n != 3 {
		t.Errorf("%d calls failed; discovery fetched %d times, want 3", failed.Load(), n)
	}
	control(t, base, "DELETE", "faults", "")

	// With both endpoints configured there is no discovery, and Revoke needs RevokeURL.
	c = newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "sysapp", ClientSecret: sysSecret,
		AuthorizeURL: issuer + "/v1/authorize", TokenURL: issuer + "/v1/token"})
	tok, err := c.ClientCredentials(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, tok); err != nil {
		t.Fatalf("revoke without an endpoint: %v", err)
	}
	if calls := oauthCalls(t, base); calls["oauth2.discovery"] != 3 || calls["oauth2.revoke"] != 0 {
		t.Errorf("calls %v: want no discovery and no revocation", calls)
	}
}

func TestOAuth2DiscoveryIssuerMismatch(t *testing.T) {
	// The emulator names its issuer after a public host the client was not configured with.
	_, issuer := oauthIdentity(t, emulator.Config{Issuer: "https://acme.login.fabric.test"})
	c := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "sysapp", ClientSecret: sysSecret})
	_, err := c.ClientCredentials(context.Background(), nil)
	wantKind(t, err, ErrUnavailable, sysSecret)
	if !strings.Contains(err.Error(), "issuer") {
		t.Errorf("error %q does not say the issuer differs", err)
	}
}

// TestOAuth2DiscoveryDocument: the document's endpoints must be absolute; without a revocation
// endpoint Revoke does nothing.
func TestOAuth2DiscoveryDocument(t *testing.T) {
	var doc atomic.Value
	var revokes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(doc.Load().(string)))
		case "/token":
			_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fakeJWT(map[string]any{"sub": "sysapp"}), "expires_in": 600})
		default:
			revokes.Add(1)
		}
	}))
	defer srv.Close()
	ctx := context.Background()

	doc.Store(`{"issuer":"` + srv.URL + `","token_endpoint":"/token"}`)
	c := newOAuth2(t, OAuth2Options{Issuer: srv.URL, ClientID: "sysapp", ClientSecret: sysSecret})
	_, err := c.ClientCredentials(ctx, nil)
	wantKind(t, err, ErrUnavailable, sysSecret)
	if !strings.Contains(err.Error(), "token_endpoint") {
		t.Errorf("error %q does not name the bad endpoint", err)
	}

	doc.Store(`{"issuer":"` + srv.URL + `","token_endpoint":"` + srv.URL + `/token"}`)
	tok, err := c.ClientCredentials(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AuthCodeURL(ctx, "st", "ch", oauthRedirect, []string{"openid"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("authorize URL without an authorization endpoint: %v", err)
	}
	if err := c.Revoke(ctx, tok); err != nil || revokes.Load() != 0 {
		t.Errorf("revoke without a revocation endpoint: %v, %d calls", err, revokes.Load())
	}
}

func TestOAuth2ClientCredentials(t *testing.T) {
	base, issuer := oauthIdentity(t, emulator.Config{})
	ctx := context.Background()
	c := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "sysapp", ClientSecret: sysSecret})
	tok, err := c.ClientCredentials(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Scp []string `json:"scp"`
	}
	jwtClaims(tok.AccessToken, &claims)
	if !slices.Equal(claims.Scp, []string{"s2s"}) || tok.User.ID != "sysapp" || tok.User.Name != "sysapp" || tok.RefreshToken != "" {
		t.Errorf("token: scopes %v, user %+v, refresh token %v", claims.Scp, tok.User, tok.RefreshToken != "")
	}
	if d := time.Until(tok.AccessExpiry); d < 9*time.Minute || d > 10*time.Minute {
		t.Errorf("access expiry in %s, want expires_in's 10m", d)
	}
	if n := oauthCalls(t, base)["oauth2.token.client_credentials"]; n != 1 {
		t.Errorf("%d client_credentials calls", n)
	}
	if _, err := c.Refresh(ctx, tok); !errors.Is(err, ErrRejected) {
		t.Errorf("refresh without a refresh token: %v", err)
	}

	// The id and secret are form-encoded in the Basic header.
	odd := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: oddID, ClientSecret: oddSecret})
	if tok, err := odd.ClientCredentials(ctx, []string{"s2s"}); err != nil || tok.User.ID != oddID {
		t.Errorf("odd client: %v", err)
	}

	// Refusals of the configuration are no dead session.
	_, err = c.ClientCredentials(ctx, []string{"openid"})
	wantKind(t, err, ErrUnavailable, sysSecret)
	wantCode(t, err, 400, "invalid_scope")
	bad := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "sysapp", ClientSecret: "wrong-secret"})
	_, err = bad.ClientCredentials(ctx, nil)
	wantKind(t, err, ErrUnavailable, "wrong-secret")
	wantCode(t, err, 401, "invalid_client")
	spa := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "spa"})
	_, err = spa.ClientCredentials(ctx, nil)
	wantKind(t, err, ErrUnavailable)
	if n := oauthCalls(t, base)["oauth2.token.client_credentials"]; n != 4 {
		t.Errorf("%d client_credentials calls, want 4: a public client must not ask", n)
	}
}

func TestOAuth2CodePKCE(t *testing.T) {
	base, issuer := oauthIdentity(t, emulator.Config{})
	ctx := context.Background()
	c := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "spa"})
	tok := pkceLogin(t, c)

	var claims struct {
		UID          string `json:"uid"`
		FabricUserID string `json:"fabricUserId"`
	}
	jwtClaims(tok.AccessToken, &claims)
	u := tok.User
	if u.ID == "" || u.ID != claims.FabricUserID || u.Name != "pat" || u.Account != account || u.Type != "customer" ||
		!slices.Equal(u.Roles, []string{"customer", "buyer"}) {
		t.Errorf("user %+v (claims %+v)", u, claims)
	}
	if tok.RefreshToken == "" || !tok.RefreshExpiry.IsZero() {
		t.Errorf("refresh token %v, expiry %v: want an opaque one of unknown expiry", tok.RefreshToken != "", tok.RefreshExpiry)
	}
	if d := time.Until(tok.AccessExpiry); d < 29*time.Minute || d > 30*time.Minute {
		t.Errorf("access expiry in %s, want 30m", d)
	}

	// A wrong verifier, a used code and a missing code are refusals.
	verifier, challenge, _ := NewPKCE()
	authURL, _ := c.AuthCodeURL(ctx, "st-2", challenge, oauthRedirect, []string{"openid"})
	code, state := oauthSignIn(t, authURL, "pat", "pat-password")
	if state != "st-2" {
		t.Errorf("state %q", state)
	}
	other, _, _ := NewPKCE()
	_, err := c.Exchange(ctx, code, other, oauthRedirect)
	wantKind(t, err, ErrRejected, code, other, verifier)
	wantCode(t, err, 400, "invalid_grant")
	_, err = c.Exchange(ctx, code, verifier, oauthRedirect)
	wantKind(t, err, ErrRejected, code, verifier)
	_, err = c.Exchange(ctx, "", verifier, oauthRedirect)
	wantKind(t, err, ErrRejected, verifier)
	if n := oauthCalls(t, base)["oauth2.token.authorization_code"]; n != 3 {
		t.Errorf("%d authorization_code calls, want 3", n)
	}
}

func TestOAuth2CodeConfidential(t *testing.T) {
	_, issuer := oauthIdentity(t, emulator.Config{})
	ctx := context.Background()
	c := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "webapp", ClientSecret: webSecret})

	// With PKCE, and without: the client's secret proves it.
	if tok := pkceLogin(t, c); tok.User.Name != "pat" || tok.RefreshToken == "" {
		t.Errorf("PKCE login of a confidential client: %+v", tok.User)
	}
	authURL, err := c.AuthCodeURL(ctx, "st-1", "", oauthRedirect, []string{"openid", "offline_access"})
	if err != nil || strings.Contains(authURL, "code_challenge") {
		t.Fatalf("authorize URL %s: %v", authURL, err)
	}
	code, _ := oauthSignIn(t, authURL, "pat", "pat-password")
	tok, err := c.Exchange(ctx, code, "", oauthRedirect)
	if err != nil || tok.User.Account != account {
		t.Fatalf("exchange: %v", err)
	}
	if _, err := c.Refresh(ctx, tok); err != nil {
		t.Fatalf("refresh: %v", err)
	}

	// A wrong secret is sitegate's configuration, even where the code is fine.
	code, _ = oauthSignIn(t, authURL, "pat", "pat-password")
	bad := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "webapp", ClientSecret: "wrong-secret"})
	_, err = bad.Exchange(ctx, code, "", oauthRedirect)
	wantKind(t, err, ErrUnavailable, code, "wrong-secret", webSecret)
	wantCode(t, err, 401, "invalid_client")
}

func TestOAuth2Refresh(t *testing.T) {
	base, issuer := oauthIdentity(t, emulator.Config{})
	ctx := context.Background()
	c := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "spa", Timeout: 300 * time.Millisecond})
	tok := pkceLogin(t, c)
	tok.RefreshExpiry = time.Now().Add(45 * 24 * time.Hour).Truncate(time.Second)

	next, err := c.Refresh(ctx, tok)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if next.RefreshToken == tok.RefreshToken || next.AccessToken == tok.AccessToken || next.User.ID != tok.User.ID {
		t.Errorf("refresh did not rotate: %+v", next.User)
	}
	if !next.RefreshExpiry.Equal(tok.RefreshExpiry) {
		t.Errorf("rotated refresh token expires %v, want the original %v", next.RefreshExpiry, tok.RefreshExpiry)
	}
	_, err = c.Refresh(ctx, tok) // rotated away
	wantKind(t, err, ErrRejected, tok.RefreshToken, next.RefreshToken)
	wantCode(t, err, 400, "invalid_grant")

	// Outages and slowness leave the refresh token usable.
	for _, fault := range []string{
		`{"endpoint":"oauth2.token.refresh_token","status":503}`,
		`{"endpoint":"oauth2.token.refresh_token","status":500}`,
		`{"endpoint":"oauth2.token.refresh_token","drop":true}`,
		`{"endpoint":"oauth2.token.refresh_token","latency":"2s"}`,
	} {
		control(t, base, "POST", "faults", fault)
		_, err = c.Refresh(ctx, next)
		wantKind(t, err, ErrUnavailable, next.RefreshToken)
		control(t, base, "DELETE", "faults", "")
	}
	control(t, base, "POST", "faults", `{"endpoint":"oauth2.token.refresh_token","status":503}`)
	_, err = c.Refresh(ctx, next)
	wantCode(t, err, 503, "temporarily_unavailable")
	control(t, base, "DELETE", "faults", "")
	next, err = c.Refresh(ctx, next)
	if err != nil {
		t.Fatalf("refresh after the outage: %v", err)
	}

	// A deactivated user's grant is over.
	control(t, base, "PATCH", "users/pat", `{"active":false}`)
	_, err = c.Refresh(ctx, next)
	wantKind(t, err, ErrRejected, next.RefreshToken)
	wantCode(t, err, 400, "invalid_grant")
}

func TestOAuth2RefreshKept(t *testing.T) {
	at := fakeJWT(map[string]any{"sub": "pat@example.com", "uid": "00u1", "exp": time.Now().Add(time.Hour).Unix()})
	forms := make(chan url.Values, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		forms <- r.PostForm
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"token_type":"Bearer","access_token":"` + at + `"}`))
	}))
	defer srv.Close()
	c := newOAuth2(t, OAuth2Options{Issuer: srv.URL, ClientID: "spa", AuthorizeURL: srv.URL + "/authorize", TokenURL: srv.URL + "/token"})
	old := &Tokens{RefreshToken: "rt-1", RefreshExpiry: time.Unix(2e9, 0)}
	next, err := c.Refresh(context.Background(), old)
	if err != nil {
		t.Fatal(err)
	}
	if next.RefreshToken != "rt-1" || !next.RefreshExpiry.Equal(old.RefreshExpiry) || next.User.ID != "00u1" || next.User.Name != "pat@example.com" {
		t.Errorf("tokens %+v", next)
	}
	if d := time.Until(next.AccessExpiry); d < 59*time.Minute || d > time.Hour {
		t.Errorf("access expiry in %s, want the token's exp", d)
	}
	if form := <-forms; form.Get("grant_type") != "refresh_token" || form.Get("refresh_token") != "rt-1" || form.Get("client_id") != "spa" {
		t.Errorf("form %v", form)
	}
}

// TestOAuth2ExpiryEarliest checks that a token expires at the earlier of its exp and
// expires_in: exp is in whole seconds and expires_in is counted by the server before the answer
// travels, so either alone could let sitegate send a token its issuer holds expired.
func TestOAuth2ExpiryEarliest(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exp       time.Duration // from now, in the token
		expiresIn int
		want      time.Duration
	}{
		{"exp first", 10 * time.Second, 3600, 10 * time.Second},
		{"expires_in first", time.Hour, 60, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := fakeJWT(map[string]any{"sub": "app", "exp": time.Now().Add(tc.exp).Unix()})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = fmt.Fprintf(w, `{"token_type":"Bearer","access_token":%q,"expires_in":%d}`, at, tc.expiresIn)
			}))
			defer srv.Close()
			c := newOAuth2(t, OAuth2Options{Issuer: srv.URL, ClientID: "app", ClientSecret: "s", AuthorizeURL: srv.URL + "/a", TokenURL: srv.URL + "/token"})
			tok, err := c.ClientCredentials(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Until(tok.AccessExpiry); d > tc.want || d < tc.want-2*time.Second {
				t.Errorf("access expiry in %s, want about %s", d, tc.want)
			}
		})
	}
}

func TestOAuth2Revoke(t *testing.T) {
	base, issuer := oauthIdentity(t, emulator.Config{})
	ctx := context.Background()
	c := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "spa"})
	tok := pkceLogin(t, c)

	control(t, base, "POST", "faults", `{"endpoint":"oauth2.revoke","status":503}`)
	err := c.Revoke(ctx, tok)
	wantKind(t, err, ErrUnavailable, tok.RefreshToken, tok.AccessToken)
	control(t, base, "DELETE", "faults", "")

	if err := c.Revoke(ctx, tok); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if n := oauthCalls(t, base)["oauth2.revoke"]; n != 3 {
		t.Errorf("%d revocation calls, want 3 (the failed one, then both tokens)", n)
	}
	_, err = c.Refresh(ctx, tok)
	wantKind(t, err, ErrRejected, tok.RefreshToken)
	wantCode(t, err, 400, "invalid_grant")

	// A confidential client authenticates its revocations.
	web := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "webapp", ClientSecret: webSecret})
	wtok := pkceLogin(t, web)
	if err := web.Revoke(ctx, wtok); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	_, err = web.Refresh(ctx, wtok)
	wantKind(t, err, ErrRejected, wtok.RefreshToken, webSecret)
	bad := newOAuth2(t, OAuth2Options{Issuer: issuer, ClientID: "webapp", ClientSecret: "wrong-secret"})
	err = bad.Revoke(ctx, wtok)
	wantKind(t, err, ErrUnavailable, wtok.RefreshToken, "wrong-secret")
	wantCode(t, err, 401, "invalid_client")
}

// TestOAuth2Answers: answers sitegate cannot use are ErrUnavailable, and no error quotes an
// error_description.
func TestOAuth2Answers(t *testing.T) {
	var answer atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		a := answer.Load().([2]string)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(map[string]int{"200": 200, "400": 400, "401": 401}[a[0]])
		_, _ = w.Write([]byte(a[1]))
	}))
	defer srv.Close()
	c := newOAuth2(t, OAuth2Options{Issuer: srv.URL, ClientID: "sysapp", ClientSecret: sysSecret,
		AuthorizeURL: srv.URL + "/authorize", TokenURL: srv.URL + "/token"})
	for _, tc := range []struct {
		status, body string
		kind         error
		code         string
	}{
		{"200", `{"access_token":"` + strings.Repeat("a", maxAnswer) + `"}`, ErrUnavailable, ""},
		{"200", `{"access_token":"opaque"}`, ErrUnavailable, ""}, // no expiry
		{"200", `{"access_token":"opaque","expires_in":60,"token_type":"DPoP"}`, ErrUnavailable, ""},
		{"200", `<html>`, ErrUnavailable, ""},
		{"400", `{"error":"invalid_grant","error_description":"user pat@example.com is locked"}`, ErrRejected, "invalid_grant"},
		{"400", `{"error":"invalid_request","error_description":"user pat@example.com is locked"}`, ErrUnavailable, "invalid_request"},
		{"400", `{"error":"unsupported_grant_type"}`, ErrUnavailable, "unsupported_grant_type"},
		{"401", `{"error":"unauthorized_client"}`, ErrUnavailable, "unauthorized_client"},
		{"400", `{"error":"bad code pat@example.com"}`, ErrUnavailable, ""}, // not a code
	} {
		answer.Store([2]string{tc.status, tc.body})
		_, err := c.ClientCredentials(context.Background(), nil)
		wantKind(t, err, tc.kind, sysSecret, "pat@example.com")
		if e := new(Error); !errors.As(err, &e) || e.Code != tc.code {
			t.Errorf("%s %.60s: code of %v, want %q", tc.status, tc.body, err, tc.code)
		}
	}
	answer.Store([2]string{"200", `{"access_token":"opaque","expires_in":"90"}`})
	if tok, err := c.ClientCredentials(context.Background(), nil); err != nil || time.Until(tok.AccessExpiry) > 90*time.Second {
		t.Errorf("expires_in as a string: %v", err)
	}
}

func TestOAuth2User(t *testing.T) {
	accounts := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	one := accounts(map[string]any{account: map[string]any{"roles": []string{"r1", "r2"}, "id": account, "logoUrl": nil}})
	two := accounts(map[string]any{account: map[string]any{"roles": []string{"r1"}}, "60c91750fa8d3e000854e8ea": map[string]any{}})
	for name, tc := range map[string]struct {
		claims map[string]any
		want   User
	}{
		"vendor sample": {map[string]any{"sub": "pat@example.com", "uid": "00u7", "fabricUserId": "11b3", "userPoolType": "customer", "accounts": one},
			User{ID: "11b3", Name: "pat@example.com", Account: account, Type: "customer", Roles: []string{"r1", "r2"}}},
		"uid":               {map[string]any{"sub": "pat@example.com", "uid": "00u7"}, User{ID: "00u7", Name: "pat@example.com"}},
		"sub":               {map[string]any{"sub": "pat@example.com"}, User{ID: "pat@example.com", Name: "pat@example.com"}},
		"several accounts":  {map[string]any{"sub": "pat", "accounts": two}, User{ID: "pat", Name: "pat"}},
		"accounts object":   {map[string]any{"sub": "pat", "accounts": json.RawMessage(one)}, User{ID: "pat", Name: "pat", Account: account, Roles: []string{"r1", "r2"}}},
		"accounts unusable": {map[string]any{"sub": "pat", "accounts": "{"}, User{ID: "pat", Name: "pat"}},
	} {
		got := oauthUser(fakeJWT(tc.claims))
		if got.ID != tc.want.ID || got.Name != tc.want.Name || got.Account != tc.want.Account || got.Type != tc.want.Type || !slices.Equal(got.Roles, tc.want.Roles) {
			t.Errorf("%s: %+v, want %+v", name, got, tc.want)
		}
	}
	if u := oauthUser("opaque"); u.ID != "" {
		t.Errorf("opaque token: %+v", u)
	}
}
