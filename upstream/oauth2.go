package upstream

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// OAuth2Options configures an OAuth2 client of an (Okta-backed) fabric authorization server.
type OAuth2Options struct {
	// Issuer is the authorization server, e.g. https://acme.login.fabric.inc/oauth2/default.
	// Required.
	Issuer string
	// ClientID is the app's client id. Required.
	ClientID string
	// ClientSecret authenticates a confidential client with HTTP Basic (system apps, user apps
	// without PKCE). Empty means a public client: it sends its client_id in the form and must use
	// PKCE.
	ClientSecret string
	// AuthorizeURL, TokenURL and RevokeURL override the endpoints of the discovery document
	// ({Issuer}/.well-known/openid-configuration). Setting both AuthorizeURL and TokenURL turns
	// discovery off; Revoke then needs RevokeURL.
	AuthorizeURL, TokenURL, RevokeURL string
	// Timeout bounds each call. Default: 10s.
	Timeout time.Duration
	// HTTPClient is used for the calls. Default: a dedicated client (never http.DefaultClient)
	// that does not follow redirects.
	HTTPClient *http.Client
}

// OAuth2 is the OAuth 2.0 dialect of fabric Identity v2/v3 (an Okta custom authorization
// server): the authorization code grant with PKCE for user apps, refresh_token with rotation,
// client_credentials for system apps, and RFC 7009 revocation. Form-encoded calls, RFC 6749 §5.2
// errors: invalid_grant is a rejection, every other error code a configuration problem
// (ErrUnavailable, with the code in Error.Code). The endpoints come from the discovery document,
// fetched on first need and kept once it was read.
type OAuth2 struct {
	c          *caller
	issuer     string
	id, secret string
	conf       endpoints // the configured ones
	discover   bool      // whether the missing ones come from discovery

	mu     sync.Mutex
	found  *endpoints // the configured ones completed by discovery, once it succeeded
	flight *discovery // the discovery under way
}

type endpoints struct{ authorize, token, revoke string }

// discovery is one fetch of the discovery document that concurrent callers wait for.
type discovery struct {
	done chan struct{}
	ep   endpoints
	err  error
}

// NewOAuth2 returns an OAuth2 client. It makes no call: discovery happens on first need.
func NewOAuth2(o OAuth2Options) (*OAuth2, error) {
	issuer := strings.TrimSuffix(o.Issuer, "/")
	if !httpURL(issuer) {
		return nil, fmt.Errorf("oauth2 issuer %q is not an absolute http or https URL", o.Issuer)
	}
	if o.ClientID == "" {
		return nil, errors.New("oauth2 needs a client id")
	}
	for _, u := range []struct{ name, url string }{{"authorize", o.AuthorizeURL}, {"token", o.TokenURL}, {"revoke", o.RevokeURL}} {
		if u.url != "" && !httpURL(u.url) {
			return nil, fmt.Errorf("oauth2 %s URL %q is not an absolute http or https URL", u.name, u.url)
		}
	}
	c, err := newCaller(Options{BaseURL: issuer, Timeout: o.Timeout, HTTPClient: o.HTTPClient})
	if err != nil {
		return nil, err
	}
	return &OAuth2{
		c: c, issuer: issuer, id: o.ClientID, secret: o.ClientSecret,
		conf:     endpoints{authorize: o.AuthorizeURL, token: o.TokenURL, revoke: o.RevokeURL},
		discover: o.AuthorizeURL == "" || o.TokenURL == "",
	}, nil
}

// httpURL reports whether s is an absolute http or https URL.
func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// AuthCodeURL returns the authorize URL that starts a browser login: response_type=code,
// client_id, redirect_uri, scope (openid, and offline_access for a refresh token), state and,
// when challenge is set, code_challenge_method=S256 and code_challenge (see NewPKCE).
func (c *OAuth2) AuthCodeURL(ctx context.Context, state, challenge, redirectURI string, scopes []string) (string, error) {
	ep, err := c.endpoints(ctx)
	if err != nil {
		return "", err
	}
	if ep.authorize == "" {
		return "", &Error{kind: ErrUnavailable, reason: "the authorization server has no authorization endpoint"}
	}
	u, err := url.Parse(ep.authorize)
	if err != nil {
		return "", &Error{kind: ErrUnavailable, reason: "unreadable authorization endpoint"}
	}
	q := u.Query()
	q.Set("response_type", "code")
	q.Set("client_id", c.id)
	q.Set("redirect_uri", redirectURI)
	q.Set("scope", strings.Join(scopes, " "))
	q.Set("state", state)
	if challenge != "" {
		q.Set("code_challenge_method", "S256")
		q.Set("code_challenge", challenge)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Exchange redeems the authorization code of a login (the authorization_code grant), with the
// PKCE verifier when the login had a challenge. redirectURI must be the one of AuthCodeURL.
func (c *OAuth2) Exchange(ctx context.Context, code, verifier, redirectURI string) (*Tokens, error) {
	if code == "" {
		return nil, &Error{kind: ErrRejected, reason: "no authorization code"}
	}
	f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}}
	if verifier != "" {
		f.Set("code_verifier", verifier)
	}
	t, err := c.grant(ctx, f)
	if err != nil {
		return nil, err
	}
	t.User = oauthUser(t.AccessToken)
	return t, nil
}

// Refresh exchanges the refresh token of t for new tokens. When the answer has no refresh token,
// t's is kept; a rotated one keeps t's expiry unless it says its own, as Okta's rotation keeps
// the original expiry.
func (c *OAuth2) Refresh(ctx context.Context, t *Tokens) (*Tokens, error) {
	if t.RefreshToken == "" {
		return nil, &Error{kind: ErrRejected, reason: "no refresh token"}
	}
	next, err := c.grant(ctx, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {t.RefreshToken}})
	if err != nil {
		return nil, err
	}
	if next.RefreshToken == "" {
		next.RefreshToken = t.RefreshToken
	}
	if next.RefreshExpiry.IsZero() {
		next.RefreshExpiry = t.RefreshExpiry
	}
	next.User = oauthUser(next.AccessToken)
	return next, nil
}

// ClientCredentials asks for a token of the (system) app itself, with scopes, s2s when there are
// none. It needs a ClientSecret. There is no refresh token: call again before AccessExpiry.
func (c *OAuth2) ClientCredentials(ctx context.Context, scopes []string) (*Tokens, error) {
	if c.secret == "" {
		return nil, &Error{kind: ErrUnavailable, reason: "client_credentials needs a client secret"}
	}
	scope := "s2s"
	if len(scopes) > 0 {
		scope = strings.Join(scopes, " ")
	}
	t, err := c.grant(ctx, url.Values{"grant_type": {"client_credentials"}, "scope": {scope}})
	if err != nil {
		return nil, err
	}
	var claims struct {
		Sub string `json:"sub"`
		CID string `json:"cid"`
	}
	jwtClaims(t.AccessToken, &claims)
	t.User = User{ID: cmp.Or(claims.CID, claims.Sub), Name: claims.Sub}
	return t, nil
}

// Revoke revokes t's tokens (RFC 7009): the refresh token, which under Okta ends its whole grant,
// then the access token. Without a revocation endpoint, configured or discovered, it does nothing.
func (c *OAuth2) Revoke(ctx context.Context, t *Tokens) error {
	ep, err := c.endpoints(ctx)
	if err != nil {
		return err
	}
	if ep.revoke == "" {
		return nil
	}
	for _, tok := range []struct{ value, hint string }{{t.RefreshToken, "refresh_token"}, {t.AccessToken, "access_token"}} {
		if tok.value == "" {
			continue
		}
		a, err := c.send(ctx, "the revocation endpoint", ep.revoke, url.Values{"token": {tok.value}, "token_type_hint": {tok.hint}})
		if err != nil {
			return err
		}
		if a.status != http.StatusOK {
			return oauthFailure(a, "the revocation endpoint")
		}
	}
	return nil
}

// NewPKCE returns a PKCE code verifier and its S256 challenge (RFC 7636): 32 random bytes,
// base64url-encoded (43 unreserved characters), and the base64url SHA-256 of that.
func NewPKCE() (verifier, challenge string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generating a PKCE verifier: %w", err)
	}
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// grant calls the token endpoint with a grant's form and reads the TokenResponse. The id_token
// is left out: the fabric APIs take the access token.
func (c *OAuth2) grant(ctx context.Context, form url.Values) (*Tokens, error) {
	ep, err := c.endpoints(ctx)
	if err != nil {
		return nil, err
	}
	if ep.token == "" {
		return nil, &Error{kind: ErrUnavailable, reason: "the authorization server has no token endpoint"}
	}
	asked := time.Now()
	a, err := c.send(ctx, "the token endpoint", ep.token, form)
	if err != nil {
		return nil, err
	}
	if a.status != http.StatusOK {
		return nil, oauthFailure(a, "the token endpoint")
	}
	var r struct {
		AccessToken  string      `json:"access_token"`
		TokenType    string      `json:"token_type"`
		ExpiresIn    json.Number `json:"expires_in"`
		RefreshToken string      `json:"refresh_token"`
	}
	if err := json.Unmarshal(a.body, &r); err != nil || r.AccessToken == "" {
		return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "unreadable TokenResponse"}
	}
	if r.TokenType != "" && !strings.EqualFold(r.TokenType, "Bearer") {
		return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "the access token is not a Bearer token"}
	}
	// The access token expires at the earlier of its exp (when it is a JWT) and expires_in
	// counted from when the request was sent: the answer's own travel time, and exp's whole
	// seconds, must not make sitegate send a token after it expired.
	exp, ok := jwtExpiry(r.AccessToken)
	if sec, err := r.ExpiresIn.Float64(); err == nil && sec > 0 && sec < 1<<32 {
		if in := asked.Add(time.Duration(sec * float64(time.Second))); !ok || in.Before(exp) {
			exp, ok = in, true
		}
	}
	if !ok {
		return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "access token without an expiry"}
	}
	t := &Tokens{AccessToken: r.AccessToken, AccessExpiry: exp, RefreshToken: r.RefreshToken}
	if rexp, ok := jwtExpiry(r.RefreshToken); ok { // Okta's refresh tokens are opaque
		t.RefreshExpiry = rexp
	}
	return t, nil
}

// oauthFailure classifies a non-200 answer by its RFC 6749 §5.2 error code: invalid_grant (an
// authorization code or refresh token that is invalid, expired, used or revoked, or a user who
// was deactivated) means the session is over. Any other code (invalid_client,
// unauthorized_client, invalid_scope, invalid_request, unsupported_grant_type) is sitegate's
// configuration, and 5xx is the server's: neither may end anyone's session. The
// error_description is left out, since it may quote what was sent.
func oauthFailure(a *answer, what string) error {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(a.body, &e)
	code := e.Error
	if !oauthCode(code) {
		code = ""
	}
	if code == "invalid_grant" && a.status >= 400 && a.status < 500 {
		return &Error{kind: ErrRejected, Status: a.status, Code: code, reason: what + " refused the grant"}
	}
	return &Error{kind: ErrUnavailable, Status: a.status, Code: code, reason: what + " refused the call"}
}

// oauthCode reports whether s looks like an error code (invalid_client, server_error) rather than
// text that could quote anything.
func oauthCode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' && r != '.' && r != '-' {
			return false
		}
	}
	return true
}

// oauthUser describes the user of an access token from its claims (§4.3), unverified: the gateway
// verifies tokens itself. ID is fabricUserId, else uid (Okta's user id), else sub; Name is sub
// (the login); Type is userPoolType. The accounts claim is a JSON-encoded string of an object
// keyed by account id: when it has exactly one entry, that key is Account and its roles are Roles.
func oauthUser(token string) User {
	var c struct {
		Sub          string          `json:"sub"`
		UID          string          `json:"uid"`
		FabricUserID string          `json:"fabricUserId"`
		UserPoolType string          `json:"userPoolType"`
		Accounts     json.RawMessage `json:"accounts"`
	}
	jwtClaims(token, &c)
	u := User{ID: cmp.Or(c.FabricUserID, c.UID, c.Sub), Name: c.Sub, Type: c.UserPoolType}
	raw := []byte(c.Accounts)
	var s string
	if json.Unmarshal(raw, &s) == nil {
		raw = []byte(s)
	}
	var accounts map[string]struct {
		Roles flexRoles `json:"roles"`
	}
	if json.Unmarshal(raw, &accounts) == nil && len(accounts) == 1 {
		for id, a := range accounts {
			u.Account, u.Roles = id, a.Roles.list
		}
	}
	return u
}

// endpoints returns the endpoints, discovering the missing ones on first need. Concurrent callers
// share one fetch, which runs detached from their cancellation; a failed fetch is not kept, so the
// next call tries again.
func (c *OAuth2) endpoints(ctx context.Context) (endpoints, error) {
	if !c.discover {
		return c.conf, nil
	}
	c.mu.Lock()
	if c.found != nil {
		ep := *c.found
		c.mu.Unlock()
		return ep, nil
	}
	d := c.flight
	if d == nil {
		d = &discovery{done: make(chan struct{})}
		c.flight = d
		go c.fetchDiscovery(context.WithoutCancel(ctx), d)
	}
	c.mu.Unlock()
	select {
	case <-d.done:
		return d.ep, d.err
	case <-ctx.Done():
		return endpoints{}, &Error{kind: ErrUnavailable, reason: "waiting for the discovery document: " + causeOf(ctx.Err())}
	}
}

func (c *OAuth2) fetchDiscovery(ctx context.Context, d *discovery) {
	d.ep, d.err = c.discoverEndpoints(ctx)
	c.mu.Lock()
	if d.err == nil {
		ep := d.ep
		c.found = &ep
	}
	c.flight = nil
	c.mu.Unlock()
	close(d.done)
}

// discoverEndpoints reads the discovery document and completes the configured endpoints with its
// own, which must be absolute http(s) URLs of a document for this issuer.
func (c *OAuth2) discoverEndpoints(ctx context.Context) (endpoints, error) {
	a, err := c.send(ctx, "the discovery document", c.issuer+"/.well-known/openid-configuration", nil)
	if err != nil {
		return endpoints{}, err
	}
	if a.status != http.StatusOK {
		return endpoints{}, &Error{kind: ErrUnavailable, Status: a.status, reason: "no discovery document"}
	}
	var doc struct {
		Issuer    string `json:"issuer"`
		Authorize string `json:"authorization_endpoint"`
		Token     string `json:"token_endpoint"`
		Revoke    string `json:"revocation_endpoint"`
	}
	if err := json.Unmarshal(a.body, &doc); err != nil {
		return endpoints{}, &Error{kind: ErrUnavailable, Status: a.status, reason: "unreadable discovery document"}
	}
	if doc.Issuer != c.issuer {
		return endpoints{}, &Error{kind: ErrUnavailable, Status: a.status,
			reason: fmt.Sprintf("the discovery document is for issuer %.200q, not %q", doc.Issuer, c.issuer)}
	}
	ep := c.conf
	for _, f := range []struct {
		name       string
		dst        *string
		discovered string
	}{{"authorization_endpoint", &ep.authorize, doc.Authorize}, {"token_endpoint", &ep.token, doc.Token}, {"revocation_endpoint", &ep.revoke, doc.Revoke}} {
		if *f.dst != "" || f.discovered == "" {
			continue
		}
		if !httpURL(f.discovered) {
			return endpoints{}, &Error{kind: ErrUnavailable, Status: a.status,
				reason: "the discovery document's " + f.name + " is not an absolute http or https URL"}
		}
		*f.dst = f.discovered
	}
	return ep, nil
}

// send calls endpoint: a GET without form, else a form POST with the client's authentication
// (HTTP Basic with the form-encoded id and secret, RFC 6749 §2.3.1, or a public client's
// client_id in the form). It returns the answer, or an ErrUnavailable *Error when there is none.
// what names the endpoint in errors, which never hold the form.
func (c *OAuth2) send(ctx context.Context, what, endpoint string, form url.Values) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.c.timeout)
	defer cancel()
	method, body := http.MethodGet, io.Reader(nil)
	if form != nil {
		if c.secret == "" {
			form.Set("client_id", c.id)
		}
		method, body = http.MethodPost, strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint, body)
	if err != nil {
		return nil, &Error{kind: ErrUnavailable, reason: "building the request to " + what}
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if c.secret != "" {
			req.SetBasicAuth(url.QueryEscape(c.id), url.QueryEscape(c.secret))
		}
	}
	return c.c.do(req, what)
}
