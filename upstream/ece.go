package upstream

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// ECE is the Elastic Cloud Enterprise dialect: POST /api/v1/users/auth/_login, and _refresh with
// the current token as bearer, which must happen before that token expires. Each answer is
// {token, session_expiration_time}.
type ECE struct{ c *caller }

// NewECE returns an ECE client.
func NewECE(o Options) (*ECE, error) {
	c, err := newCaller(o)
	if err != nil {
		return nil, err
	}
	return &ECE{c}, nil
}

// Login signs a user in with a username and password.
func (e *ECE) Login(ctx context.Context, username, password string) (*Tokens, error) {
	return e.tokens(ctx, "/api/v1/users/auth/_login", nil, map[string]string{"username": username, "password": password})
}

// Refresh exchanges t's current, unexpired token for a new one.
func (e *ECE) Refresh(ctx context.Context, t *Tokens) (*Tokens, error) {
	return e.tokens(ctx, "/api/v1/users/auth/_refresh", bearerHeader(t.AccessToken), nil)
}

// Logout ends the ECE session of t.
func (e *ECE) Logout(ctx context.Context, t *Tokens) error {
	a, err := e.c.call(ctx, http.MethodPost, "/api/v1/users/auth/_logout", bearerHeader(t.AccessToken), nil)
	if err != nil {
		return err
	}
	if a.status != http.StatusOK {
		return eceFailure(a)
	}
	return nil
}

func bearerHeader(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

func (e *ECE) tokens(ctx context.Context, path string, h http.Header, body any) (*Tokens, error) {
	a, err := e.c.call(ctx, http.MethodPost, path, h, body)
	if err != nil {
		return nil, err
	}
	if a.status != http.StatusOK {
		return nil, eceFailure(a)
	}
	var r struct {
		Token                 string `json:"token"`
		SessionExpirationTime string `json:"session_expiration_time"`
	}
	if err := json.Unmarshal(a.body, &r); err != nil || r.Token == "" {
		return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "unreadable TokenResponse"}
	}
	// session_expiration_time says when the token expires; older servers omit it, and then the
	// token's exp says it.
	exp, err := time.Parse(time.RFC3339Nano, r.SessionExpirationTime)
	if err != nil {
		var ok bool
		if exp, ok = jwtExpiry(r.Token); !ok {
			return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "token without an expiry"}
		}
	}
	var claims struct {
		Sub string `json:"sub"`
	}
	jwtClaims(r.Token, &claims)
	return &Tokens{AccessToken: r.Token, AccessExpiry: exp, User: User{ID: claims.Sub, Name: claims.Sub}}, nil
}

// eceFailure classifies a non-200 answer: 401 (root.unauthorized, root.unauthenticated) means
// the credentials are refused; 501, 502 and the rest mean the authentication cluster failed.
func eceFailure(a *answer) error {
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	_ = json.Unmarshal(a.body, &e)
	code := a.header.Get("x-cloud-error-codes")
	if code == "" && len(e.Errors) > 0 {
		code = e.Errors[0].Code
	}
	kind := ErrUnavailable
	if a.status == http.StatusUnauthorized {
		kind = ErrRejected
	}
	return &Error{kind: kind, Status: a.status, Code: code, reason: "ECE refused the call"}
}
