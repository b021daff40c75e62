package emulator

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The OAuth2 authorization servers of fabric Identity v2/v3 under /oauth2/{server}, with Okta's
// semantics (identity-protocols.md §4). Any server id is accepted; user apps use "default".

// codeLifetime is how long an authorization code can be exchanged (Okta: 60 s).
const codeLifetime = time.Minute

// tokenGrants are the grant types of the token endpoint. Each is also an endpoint name of its own,
// "oauth2.token.<grant>", so that tests can count and fault one grant without the others.
var tokenGrants = []string{"authorization_code", "refresh_token", "client_credentials"}

// userScopes can only be granted to a user, never to a client_credentials token.
var userScopes = []string{"openid", "profile", "email", "offline_access"}

// authzParams are the parameters of an authorization request that the login form carries along.
var authzParams = []string{"client_id", "redirect_uri", "response_type", "scope", "state", "code_challenge", "code_challenge_method", "nonce"}

// authCode is an issued authorization code awaiting exchange.
type authCode struct {
	clientID    string
	redirectURI string
	scopes      []string
	userID      string
	challenge   string // S256 code challenge; empty for a confidential client without PKCE
	nonce       string
	authTime    time.Time
	exp         time.Time
	family      string // the grant the code opens: every token it leads to
	used        bool
}

func (e *Emulator) oauth2Routes() {
	const p = "/oauth2/{server}"
	d := dialectOAuth2
	e.route("GET "+p+"/.well-known/openid-configuration", "oauth2.discovery", d, e.oauthDiscovery)
	e.route("GET "+p+"/.well-known/oauth-authorization-server", "oauth2.discovery", d, e.oauthDiscovery)
	e.route("GET "+p+"/v1/keys", "oauth2.keys", d, e.oauthKeys)
	e.route("GET "+p+"/v1/authorize", "oauth2.authorize", d, e.oauthAuthorize)
	e.route("POST "+p+"/v1/authorize", "oauth2.authorize", d, e.oauthAuthorize)
	e.routeSub("POST "+p+"/v1/token", "oauth2.token", d, grantOf, e.oauthToken)
	e.route("POST "+p+"/v1/revoke", "oauth2.revoke", d, e.oauthRevoke)
	e.route("GET "+p+"/v1/userinfo", "oauth2.userinfo", d, e.oauthUserinfo)
	e.route("POST "+p+"/v1/userinfo", "oauth2.userinfo", d, e.oauthUserinfo)
	e.route("POST "+p+"/v1/introspect", "oauth2.introspect", d, e.oauthIntrospect)
	e.route("GET "+p+"/v1/logout", "oauth2.logout", d, e.oauthLogout)
	for _, g := range tokenGrants {
		e.endpoints["oauth2.token."+g] = true
	}
}

// grantOf names the sub-endpoint of a token call: its grant type, when it is one of ours.
func grantOf(w http.ResponseWriter, r *http.Request) string {
	if oauthForm(w, r) != nil {
		return ""
	}
	if g := r.PostForm.Get("grant_type"); slices.Contains(tokenGrants, g) {
		return g
	}
	return ""
}

// oauthErr is an RFC 6749 §5.2 error answer.
type oauthErr struct {
	status     int
	code, desc string
}

func (o *oauthErr) Error() string { return o.code + ": " + o.desc }

func invalidGrant(desc string) error { return &oauthErr{http.StatusBadRequest, "invalid_grant", desc} }

var (
	errInvalidClient = &oauthErr{http.StatusUnauthorized, "invalid_client",
		"Client authentication failed. Either the client or the client credentials are invalid."}
	errBadCode = invalidGrant("The authorization code is invalid or has expired.")
	// errBadRefresh is Okta's answer, verbatim, to any refresh token it will not exchange.
	errBadRefresh = invalidGrant("The refresh token is invalid or expired.")
)

// failOAuth answers err in RFC 6749 form; an errBadRequest is an invalid_request.
func failOAuth(w http.ResponseWriter, err error) {
	var o *oauthErr
	var br errBadRequest
	switch {
	case errors.As(err, &o):
		fail(w, dialectOAuth2, o.status, o.code, o.desc)
	case errors.As(err, &br):
		fail(w, dialectOAuth2, http.StatusBadRequest, "invalid_request", br.msg)
	default:
		failStatus(w, dialectOAuth2, http.StatusInternalServerError)
	}
}

// oauthForm parses an application/x-www-form-urlencoded body into r.PostForm. Another content
// type, a malformed body or a repeated parameter (RFC 6749 §3.1) is a 400.
func oauthForm(w http.ResponseWriter, r *http.Request) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return badRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		return badRequest("malformed form body")
	}
	for k, v := range r.PostForm {
		if len(v) > 1 {
			return badRequest("parameter %q is repeated", k)
		}
	}
	return nil
}

// issuer is the issuer of the request's authorization server: the configured base URL, else the
// request's scheme and host, then /oauth2/{server}.
func (e *Emulator) issuer(r *http.Request) string {
	base := e.cfg.Issuer
	if base == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	return base + "/oauth2/" + r.PathValue("server")
}

func (e *Emulator) oauthDiscovery(w http.ResponseWriter, r *http.Request) {
	iss := e.issuer(r)
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                iss,
		"authorization_endpoint":                iss + "/v1/authorize",
		"token_endpoint":                        iss + "/v1/token",
		"jwks_uri":                              iss + "/v1/keys",
		"userinfo_endpoint":                     iss + "/v1/userinfo",
		"revocation_endpoint":                   iss + "/v1/revoke",
		"introspection_endpoint":                iss + "/v1/introspect",
		"end_session_endpoint":                  iss + "/v1/logout",
		"response_types_supported":              []string{"code"},
		"grant_types_supported":                 tokenGrants,
		"code_challenge_methods_supported":      []string{"S256"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"scopes_supported":                      append([]string{"s2s"}, userScopes...),
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post", "none"},
		"subject_types_supported":               []string{"public"},
	})
}

func (e *Emulator) oauthKeys(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	set := e.keys.jwks()
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, set)
}

// oauthClient returns the client with id.
func (e *Emulator) oauthClient(id string) (Client, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.clients[id]
	return c, ok
}

// absoluteHTTP reports whether uri is an absolute http or https URI without a fragment.
func absoluteHTTP(uri string) (*url.URL, bool) {
	u, err := url.Parse(uri)
	ok := err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.Fragment == ""
	return u, ok
}

// redirectAllowed reports whether c may use uri as its redirect URI: one of its registered URIs,
// or any absolute http(s) URI when it registered none.
func redirectAllowed(c Client, uri string) bool {
	if len(c.RedirectURIs) > 0 {
		return slices.Contains(c.RedirectURIs, uri)
	}
	_, ok := absoluteHTTP(uri)
	return ok
}

// logoutRedirectAllowed reports whether c may be sent to uri after logout. [EMU] Okta keeps a
// separate list of logout redirect URIs; the emulator accepts any URI on the origin of one of the
// client's redirect URIs.
func logoutRedirectAllowed(c Client, uri string) bool {
	u, ok := absoluteHTTP(uri)
	if !ok || len(c.RedirectURIs) == 0 {
		return ok
	}
	return slices.ContainsFunc(c.RedirectURIs, func(reg string) bool {
		ru, err := url.Parse(reg)
		return err == nil && ru.Scheme == u.Scheme && ru.Host == u.Host
	})
}

// redirectTo answers 302 to target with params (empty ones left out) added to its query.
func redirectTo(w http.ResponseWriter, r *http.Request, target string, params url.Values) {
	u, err := url.Parse(target)
	if err != nil {
		failOAuth(w, badRequest("redirect URI is malformed"))
		return
	}
	q := u.Query()
	for k, v := range params {
		if len(v) > 0 && v[0] != "" {
			q.Set(k, v[0])
		}
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// checkAuthorize validates an authorization request. It returns the client and its redirect URI.
// An error with an empty redirect URI (unknown client, redirect URI not allowed) must be shown to
// the user; the others are sent back to the redirect URI.
func (e *Emulator) checkAuthorize(q url.Values) (Client, string, error) {
	c, ok := e.oauthClient(q.Get("client_id"))
	if !ok {
		return c, "", &oauthErr{http.StatusBadRequest, "invalid_client", "The 'client_id' parameter names no client."}
	}
	redirect := q.Get("redirect_uri")
	if !redirectAllowed(c, redirect) {
		return c, "", badRequest("The 'redirect_uri' parameter must be a Login redirect URI in the client app settings.")
	}
	invalid := func(desc string) (Client, string, error) {
		return c, redirect, &oauthErr{http.StatusBadRequest, "invalid_request", desc}
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	switch {
	case q.Get("response_type") != "code":
		return c, redirect, &oauthErr{http.StatusBadRequest, "unsupported_response_type",
			"The response type is not supported by the authorization server. Configured response types: [code]."}
	case q.Get("state") == "":
		return invalid("The authorization request must include a 'state' parameter.")
	case strings.TrimSpace(q.Get("scope")) == "":
		return invalid("The authorization request must include a 'scope' parameter.")
	case (challenge != "" || method != "") && method != "S256":
		return invalid("The 'code_challenge_method' parameter must be S256.")
	case method != "" && (len(challenge) < 43 || len(challenge) > 128):
		return invalid("The 'code_challenge' parameter must be between 43 and 128 characters.")
	case challenge == "" && c.Secret == "":
		// A public client must use PKCE, so a code without a challenge always belongs to a
		// confidential client, which authenticates when it exchanges the code.
		return invalid("PKCE code challenge is required when the token endpoint authentication method is 'NONE'.")
	}
	return c, redirect, nil
}

// oauthAuthorize serves the hosted login page (GET) and signs the user in (POST).
func (e *Emulator) oauthAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		if err := oauthForm(w, r); err != nil {
			failOAuth(w, err)
			return
		}
		q = r.PostForm
	}
	c, redirect, err := e.checkAuthorize(q)
	var o *oauthErr
	switch {
	case err != nil && redirect == "":
		failOAuth(w, err)
		return
	case errors.As(err, &o):
		redirectTo(w, r, redirect, url.Values{"error": {o.code}, "error_description": {o.desc}, "state": {q.Get("state")}})
		return
	}
	if r.Method != http.MethodPost {
		renderLogin(w, r, http.StatusOK, q, "")
		return
	}
	u, err := e.authenticate(q.Get("username"), q.Get("password"))
	if err != nil {
		renderLogin(w, r, http.StatusUnauthorized, q, "Sign-in failed. Check your username and password.")
		return
	}
	e.mu.Lock()
	userID := u.id
	e.mu.Unlock()
	code := e.issueCode(q, c, userID)
	redirectTo(w, r, redirect, url.Values{"code": {code}, "state": {q.Get("state")}})
}

// issueCode remembers a new authorization code for a signed-in user and forgets expired ones.
func (e *Emulator) issueCode(q url.Values, c Client, userID string) string {
	code := randomString(32)
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, ac := range e.codes {
		if !now.Before(ac.exp) {
			delete(e.codes, k)
		}
	}
	e.codes[code] = &authCode{
		clientID:    c.ID,
		redirectURI: q.Get("redirect_uri"),
		scopes:      strings.Fields(q.Get("scope")),
		userID:      userID,
		challenge:   q.Get("code_challenge"),
		nonce:       q.Get("nonce"),
		authTime:    now,
		exp:         now.Add(codeLifetime),
		family:      randomString(12),
	}
	return code
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in</title>
<style>body{font-family:sans-serif;max-width:22rem;margin:4rem auto}label,input,button{display:block;width:100%;margin:.4rem 0}</style>
</head>
<body>
<h1>Sign in</h1>
{{if .Error}}<p role="alert">{{.Error}}</p>{{end}}
<form method="post" action="{{.Action}}">
{{range .Hidden}}<input type="hidden" name="{{.Name}}" value="{{.Value}}">
{{end}}<label>Username <input name="username" value="{{.Username}}" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
</body>
</html>
`))

// renderLogin writes the hosted login page carrying the authorization request q. The password is
// never written back.
func renderLogin(w http.ResponseWriter, r *http.Request, status int, q url.Values, msg string) {
	type field struct{ Name, Value string }
	var hidden []field
	for _, n := range authzParams {
		if v := q.Get(n); v != "" {
			hidden = append(hidden, field{n, v})
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_ = loginPage.Execute(w, map[string]any{
		"Action": r.URL.Path, "Hidden": hidden, "Username": q.Get("username"), "Error": msg,
	})
}

// tokenResponse is the token endpoint's answer.
type tokenResponse struct {
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	AccessToken  string `json:"access_token"`
	Scope        string `json:"scope"`
	IDToken      string `json:"id_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

func (e *Emulator) oauthToken(w http.ResponseWriter, r *http.Request) {
	if err := oauthForm(w, r); err != nil {
		failOAuth(w, err)
		return
	}
	res, err := e.tokenGrant(r, r.PostForm.Get("grant_type"))
	if err != nil {
		failOAuth(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (e *Emulator) tokenGrant(r *http.Request, grant string) (tokenResponse, error) {
	if grant == "" {
		return tokenResponse{}, badRequest("The 'grant_type' parameter is required.")
	}
	if !slices.Contains(tokenGrants, grant) {
		return tokenResponse{}, &oauthErr{http.StatusBadRequest, "unsupported_grant_type",
			"The authorization grant type is not supported by the authorization server."}
	}
	c, err := e.authClient(r)
	if err != nil {
		return tokenResponse{}, err
	}
	switch grant {
	case "authorization_code":
		return e.codeGrant(r, c)
	case "refresh_token":
		return e.refreshGrant(r, c)
	default:
		return e.clientGrant(r, c)
	}
}

// authClient authenticates the client of a token, revoke or introspect request: HTTP Basic with
// form-urlencoded id and secret (RFC 6749 §2.3.1), or client_id and client_secret in the form. A
// confidential client must prove its secret; a public client sends its id only.
func (e *Emulator) authClient(r *http.Request) (Client, error) {
	id, secret, basic := r.BasicAuth()
	if basic {
		if r.PostForm.Has("client_secret") {
			return Client{}, badRequest("The client used more than one authentication method.")
		}
		var errID, errSecret error
		id, errID = url.QueryUnescape(id)
		secret, errSecret = url.QueryUnescape(secret)
		if errID != nil || errSecret != nil {
			return Client{}, errInvalidClient
		}
		if form := r.PostForm.Get("client_id"); form != "" && form != id {
			return Client{}, errInvalidClient
		}
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	c, ok := e.oauthClient(id)
	// For a public client both secrets are empty and compare equal.
	if !ok || subtle.ConstantTimeCompare([]byte(c.Secret), []byte(secret)) != 1 {
		return Client{}, errInvalidClient
	}
	return c, nil
}

// s256 is the PKCE S256 transformation of a code verifier (RFC 7636 §4.2).
func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return b64(sum[:])
}

func (e *Emulator) codeGrant(r *http.Request, c Client) (tokenResponse, error) {
	f := r.PostForm
	code := f.Get("code")
	if err := required("code", code); err != nil {
		return tokenResponse{}, err
	}
	now := e.now()
	e.mu.Lock()
	ac, found := e.codes[code]
	var g authCode
	if found {
		g = *ac
		ac.used = true
	}
	e.mu.Unlock()
	switch {
	case !found || !now.Before(g.exp) || g.clientID != c.ID:
		return tokenResponse{}, errBadCode
	case g.used:
		// RFC 6749 §4.1.2: a code presented twice revokes the tokens it was exchanged for.
		e.revokeFamily(g.family)
		return tokenResponse{}, errBadCode
	case f.Get("redirect_uri") != g.redirectURI:
		return tokenResponse{}, invalidGrant("The 'redirect_uri' does not match the redirection URI used in the authorization request.")
	case g.challenge != "" && subtle.ConstantTimeCompare([]byte(s256(f.Get("code_verifier"))), []byte(g.challenge)) != 1:
		return tokenResponse{}, invalidGrant("PKCE verification failed.")
	}
	res, ok := e.issue(r, userGrant{
		client: c, userID: g.userID, scopes: g.scopes, authTime: g.authTime, nonce: g.nonce,
		family: g.family, refreshExp: now.Add(e.cfg.RefreshLifetime),
	})
	if !ok {
		return res, errBadCode
	}
	return res, nil
}

func (e *Emulator) refreshGrant(r *http.Request, c Client) (tokenResponse, error) {
	raw := r.PostForm.Get("refresh_token")
	if err := required("refresh_token", raw); err != nil {
		return tokenResponse{}, err
	}
	// Check the owner before redeeming, so that another client's attempt does not use it up.
	if rec, err := e.check(raw, kindOAuthRefresh); err != nil || rec.clientID != c.ID {
		return tokenResponse{}, errBadRefresh
	}
	rec, err := e.redeem(raw, kindOAuthRefresh)
	if err != nil {
		return tokenResponse{}, errBadRefresh
	}
	g := userGrant{
		client: c, userID: rec.userID, scopes: rec.scopes, family: rec.family,
		// A rotated refresh token keeps the original expiry, as Okta's do. [EMU] auth_time is
		// when the grant was issued, which is within the code's 60 s of the sign-in.
		refreshExp: rec.exp,
		authTime:   rec.exp.Add(-e.cfg.RefreshLifetime),
	}
	if e.cfg.KeepRefreshTokens {
		g.refresh = raw
	}
	// [EMU] A scope parameter is ignored: the new tokens carry the scopes originally granted.
	res, ok := e.issue(r, g)
	if !ok {
		return res, errBadRefresh
	}
	return res, nil
}

func (e *Emulator) clientGrant(r *http.Request, c Client) (tokenResponse, error) {
	if c.Secret == "" {
		return tokenResponse{}, &oauthErr{http.StatusBadRequest, "unauthorized_client",
			"The client is not authorized to use the provided grant type. Configured grant types: [authorization_code, refresh_token]."}
	}
	scopes := strings.Fields(r.PostForm.Get("scope"))
	if len(scopes) == 0 {
		scopes = []string{"s2s"}
	}
	for _, s := range scopes {
		if slices.Contains(userScopes, s) {
			return tokenResponse{}, &oauthErr{http.StatusBadRequest, "invalid_scope",
				"The following scopes are not allowed for the client_credentials grant: " + s}
		}
	}
	now := e.now()
	exp := now.Add(e.cfg.ClientTokenLifetime)
	at := e.mint(jwt.MapClaims{
		"ver": 1, "jti": "AT." + randomString(16), "iss": e.issuer(r), "aud": e.cfg.Audience,
		"iat": now.Unix(), "exp": exp.Unix(), "cid": c.ID, "sub": c.ID, "scp": scopes,
	}, token{kind: kindOAuthClient, clientID: c.ID, scopes: scopes, exp: exp})
	return tokenResponse{
		TokenType: "Bearer", ExpiresIn: int(e.cfg.ClientTokenLifetime.Seconds()), AccessToken: at,
		Scope: strings.Join(scopes, " "),
	}, nil
}

// userGrant is what a user's tokens are issued from: an exchanged code or a refresh token.
type userGrant struct {
	client     Client
	userID     string
	scopes     []string
	authTime   time.Time
	nonce      string
	family     string
	refreshExp time.Time // expiry of a new refresh token
	refresh    string    // when set, the refresh token to answer instead of a new one
}

// oauthProfile is a copy of the user fields that go into OAuth2 tokens, taken under e.mu.
type oauthProfile struct {
	uid, fabricUserID, login, email, name, first, last, account string
	roles                                                       []string
	active                                                      bool
}

func (e *Emulator) oauthProfile(userID string) (oauthProfile, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	u := e.users[userID]
	if u == nil {
		return oauthProfile{}, false
	}
	return oauthProfile{
		uid: u.uid, fabricUserID: u.fabricUserID, login: u.username, email: u.email,
		name: u.fullName(), first: u.first, last: u.last, account: u.account,
		roles: slices.Clone(u.roles), active: u.active,
	}, true
}

// accountsClaim is the accounts claim of an access token: a JSON-encoded string (not an object)
// keyed by the user's account id, as in the vendor's sample token. [EMU] The account's name is its id.
func (p oauthProfile) accountsClaim() string {
	if p.account == "" {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any{p.account: map[string]any{
		"roles": p.roles, "id": p.account, "name": p.account, "tenantId": p.account, "logoUrl": nil,
	}})
	return string(b)
}

// issue mints the tokens of a user grant: an access token, an ID token when openid was granted and
// a refresh token when offline_access was. ok is false when the user is gone or deactivated.
func (e *Emulator) issue(r *http.Request, g userGrant) (res tokenResponse, ok bool) {
	p, ok := e.oauthProfile(g.userID)
	if !ok || !p.active {
		return res, false
	}
	iss, now := e.issuer(r), e.now()
	exp := now.Add(e.cfg.AccessLifetime)
	rec := token{userID: g.userID, clientID: g.client.ID, scopes: g.scopes, exp: exp, family: g.family}
	res = tokenResponse{TokenType: "Bearer", ExpiresIn: int(e.cfg.AccessLifetime.Seconds()), Scope: strings.Join(g.scopes, " ")}
	rec.kind = kindOAuthAccess
	res.AccessToken = e.mint(jwt.MapClaims{
		"ver": 1, "jti": "AT." + randomString(16), "iss": iss, "aud": e.cfg.Audience,
		"iat": now.Unix(), "exp": exp.Unix(), "cid": g.client.ID, "uid": p.uid, "scp": g.scopes,
		"auth_time": g.authTime.Unix(), "sub": p.login, "fabricUserId": p.fabricUserID,
		"userPoolType": "customer", "accounts": p.accountsClaim(), "identityVersion": "v2",
	}, rec)
	if slices.Contains(g.scopes, "openid") {
		// at_hash: the left half of the access token's SHA-256 (OIDC Core §3.1.3.6).
		sum := sha256.Sum256([]byte(res.AccessToken))
		claims := jwt.MapClaims{
			"sub": p.uid, "email": p.email, "ver": 1, "iss": iss, "aud": g.client.ID,
			"iat": now.Unix(), "exp": exp.Unix(), "jti": "ID." + randomString(16), "amr": []string{"pwd"},
			"idp": "00o" + stableID(17, "idp", iss), "auth_time": g.authTime.Unix(), "at_hash": b64(sum[:16]),
		}
		if g.nonce != "" {
			claims["nonce"] = g.nonce
		}
		rec.kind = kindOAuthID
		res.IDToken = e.mint(claims, rec)
	}
	if slices.Contains(g.scopes, "offline_access") {
		res.RefreshToken = g.refresh
		if res.RefreshToken == "" {
			rec.kind, rec.exp = kindOAuthRefresh, g.refreshExp
			res.RefreshToken = e.opaque(rec)
		}
	}
	return res, true
}

// tokenRecord returns a copy of the record of a token the emulator issued, whatever its state
// (expired, revoked, used). ok is false for a token it did not issue or has forgotten.
func (e *Emulator) tokenRecord(raw string) (token, bool) {
	if raw == "" {
		return token{}, false
	}
	k, ok := e.key(raw)
	if !ok {
		return token{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	rec, found := e.tokens[k]
	if !found {
		return token{}, false
	}
	return *rec, true
}

// clientTokenForm reads the form of a revoke or introspect request: the authenticated client and
// the token it names. On a bad request it answers it and reports false.
func (e *Emulator) clientTokenForm(w http.ResponseWriter, r *http.Request) (Client, string, bool) {
	err := oauthForm(w, r)
	var c Client
	if err == nil {
		c, err = e.authClient(r)
	}
	if err == nil {
		err = required("token", r.PostForm.Get("token"))
	}
	if err != nil {
		failOAuth(w, err)
		return Client{}, "", false
	}
	return c, r.PostForm.Get("token"), true
}

// oauthRevoke revokes a token of the authenticated client. It answers 200 with an empty body
// whatever the token, as Okta does, so that a client cannot probe for tokens. Revoking a refresh
// token revokes every token of its grant.
func (e *Emulator) oauthRevoke(w http.ResponseWriter, r *http.Request) {
	c, raw, ok := e.clientTokenForm(w, r)
	if !ok {
		return
	}
	if rec, ok := e.tokenRecord(raw); ok && rec.clientID == c.ID {
		if rec.kind == kindOAuthRefresh {
			e.revokeFamily(rec.family)
		} else {
			e.revoke(raw)
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

func (e *Emulator) oauthUserinfo(w http.ResponseWriter, r *http.Request) {
	rec, err := e.check(bearer(r, false), kindOAuthAccess, kindOAuthClient)
	if err != nil {
		fail(w, dialectOAuth2, http.StatusUnauthorized, "invalid_token", "The access token is invalid.")
		return
	}
	if rec.kind != kindOAuthAccess || !slices.Contains(rec.scopes, "openid") {
		const desc = "The access token must provide access to at least one of these scopes - openid"
		w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", error_description="`+desc+`"`)
		fail(w, dialectOAuth2, http.StatusForbidden, "insufficient_scope", desc)
		return
	}
	p, ok := e.oauthProfile(rec.userID)
	if !ok {
		fail(w, dialectOAuth2, http.StatusUnauthorized, "invalid_token", "The access token is invalid.")
		return
	}
	// The claims of the scopes granted, as OIDC Core §5.4 has it.
	info := map[string]any{"sub": p.uid}
	if slices.Contains(rec.scopes, "profile") {
		info["name"], info["given_name"], info["family_name"], info["preferred_username"] = p.name, p.first, p.last, p.login
	}
	if slices.Contains(rec.scopes, "email") {
		info["email"], info["email_verified"] = p.email, true
	}
	writeJSON(w, http.StatusOK, info)
}

// oauthIntrospect answers RFC 7662 introspection to any authenticated client. A refresh token
// exchanged under rotation is inactive.
func (e *Emulator) oauthIntrospect(w http.ResponseWriter, r *http.Request) {
	_, raw, ok := e.clientTokenForm(w, r)
	if !ok {
		return
	}
	rec, err := e.check(raw, kindOAuthAccess, kindOAuthClient, kindOAuthID, kindOAuthRefresh)
	if err != nil || rec.used {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	out := map[string]any{
		"active": true, "token_type": "Bearer", "scope": strings.Join(rec.scopes, " "),
		"client_id": rec.clientID, "exp": rec.exp.Unix(),
	}
	if p, ok := e.oauthProfile(rec.userID); ok {
		out["username"], out["uid"], out["sub"] = p.login, p.uid, p.login
	}
	if rec.kind == kindOAuthRefresh {
		// An opaque token: its issue time follows from the expiry it keeps across rotations.
		out["iat"], out["aud"], out["iss"] = rec.exp.Add(-e.cfg.RefreshLifetime).Unix(), e.cfg.Audience, e.issuer(r)
	} else {
		claims := jwt.MapClaims{}
		// check has verified the signature already.
		if _, _, err := jwt.NewParser().ParseUnverified(raw, claims); err == nil {
			for _, k := range []string{"iat", "sub", "aud", "iss", "jti"} {
				if v, ok := claims[k]; ok {
					out[k] = v
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// oauthLogout ends the session of the ID token in id_token_hint: every token of its grant is
// revoked. It then redirects to post_logout_redirect_uri (with state) or answers 200. [EMU] The
// redirect needs an ID token of the client (expired ones are accepted, as Okta does) and an
// allowed URI, so that logout is no open redirect.
func (e *Emulator) oauthLogout(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	rec, hinted := e.tokenRecord(q.Get("id_token_hint"))
	hinted = hinted && rec.kind == kindOAuthID
	target := q.Get("post_logout_redirect_uri")
	if target != "" {
		c, ok := e.oauthClient(rec.clientID)
		if !hinted || !ok || !logoutRedirectAllowed(c, target) {
			failOAuth(w, badRequest("The 'post_logout_redirect_uri' parameter needs a valid 'id_token_hint' and must be a logout redirect URI of its client."))
			return
		}
	}
	if hinted {
		e.revokeFamily(rec.family)
	}
	if target != "" {
		redirectTo(w, r, target, url.Values{"state": {q.Get("state")}})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("You are signed out.\n"))
}
