package upstream

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
)

// FabricV1 is the fabric Identity v1 dialect: POST /api-commerceIdentity/auth/local/login and
// /auth/local/refresh, answering SignInResponse.
type FabricV1 struct{ c *caller }

// NewFabricV1 returns a fabric v1 client. SiteContext is required: v1 refuses calls without it.
func NewFabricV1(o Options) (*FabricV1, error) {
	if o.SiteContext == "" {
		return nil, &Error{kind: ErrUnavailable, reason: "fabric v1 needs an x-site-context"}
	}
	c, err := newCaller(o)
	if err != nil {
		return nil, err
	}
	return &FabricV1{c}, nil
}

// v1Rejections are the error codes that mean the credentials are bad, not that Identity failed.
var v1Rejections = []string{"LOCAL_AUTH_FAILED", "USER_DEACTIVATED_ERROR", "USER_ACCOUNT_INACTIVE", "USER_NOT_FOUND"}

// Login signs a user in with a username and password.
func (f *FabricV1) Login(ctx context.Context, username, password string) (*Tokens, error) {
	return f.signIn(ctx, "/api-commerceIdentity/auth/local/login", map[string]string{"username": username, "password": password})
}

// Refresh exchanges the refresh token of t for new tokens.
func (f *FabricV1) Refresh(ctx context.Context, t *Tokens) (*Tokens, error) {
	if t.RefreshToken == "" {
		return nil, &Error{kind: ErrRejected, reason: "no refresh token"}
	}
	return f.signIn(ctx, "/api-commerceIdentity/auth/local/refresh", map[string]string{"refreshToken": t.RefreshToken})
}

func (f *FabricV1) signIn(ctx context.Context, path string, body any) (*Tokens, error) {
	h := http.Header{"X-Site-Context": {f.c.opts.SiteContext}}
	if f.c.opts.APIKey != "" {
		h.Set("X-Api-Key", f.c.opts.APIKey)
	}
	a, err := f.c.call(ctx, http.MethodPost, path, h, body)
	if err != nil {
		return nil, err
	}
	if a.status != http.StatusOK {
		return nil, v1Failure(a)
	}
	var r signInResponse
	if err := json.Unmarshal(a.body, &r); err != nil || r.AccessToken == "" {
		return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "unreadable SignInResponse"}
	}
	exp, ok := jwtExpiry(r.AccessToken)
	if !ok {
		return nil, &Error{kind: ErrUnavailable, Status: a.status, reason: "access token without a readable exp"}
	}
	t := &Tokens{AccessToken: r.AccessToken, AccessExpiry: exp, RefreshToken: r.RefreshToken,
		User: User{ID: r.UserID.s, Name: r.Name.s, Account: r.Account, Type: r.UserType, Roles: r.Roles.list}}
	if rexp, ok := jwtExpiry(r.RefreshToken); ok {
		t.RefreshExpiry = rexp
	}
	if t.User.Account == "" || len(t.User.Account) != 24 {
		// The documents' example account is not a 24-character id; the token's accountid is.
		if acct := accountClaim(r.AccessToken); acct != "" {
			t.User.Account = acct
		}
	}
	return t, nil
}

// v1Failure classifies a non-200 answer by its APIError code (the seed shape {error, code,
// message} or the older {code, message}). Only the codes that say the credentials are bad are a
// rejection: any other failure, an API key refused included, is Identity's or sitegate's
// configuration's, and must not end anyone's session.
func v1Failure(a *answer) error {
	var e struct{ Error, Code string }
	_ = json.Unmarshal(a.body, &e)
	code := e.Error
	if code == "" && !isDigits(e.Code) {
		code = e.Code
	}
	kind := ErrUnavailable
	if slices.Contains(v1Rejections, code) {
		kind = ErrRejected
	}
	return &Error{kind: kind, Status: a.status, Code: code, reason: "fabric v1 refused the call"}
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// signInResponse decodes SignInResponse leniently: the documents disagree on the shapes of
// userId (string or number), roles (a string, strings, or {id} objects) and name (a string or
// {first, middle, last}).
type signInResponse struct {
	UserID       flexString `json:"userId"`
	Roles        flexRoles  `json:"roles"`
	Name         flexName   `json:"name"`
	Account      string     `json:"account"`
	UserType     string     `json:"userType"`
	AccessToken  string     `json:"accessToken"`
	RefreshToken string     `json:"refreshToken"`
}

type flexString struct{ s string }

func (f *flexString) UnmarshalJSON(b []byte) error {
	var n json.Number
	if json.Unmarshal(b, &f.s) == nil {
		return nil
	}
	if json.Unmarshal(b, &n) == nil {
		f.s = n.String()
	}
	return nil
}

type flexRoles struct{ list []string }

func (f *flexRoles) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		for _, r := range strings.Split(s, ",") {
			if r = strings.TrimSpace(r); r != "" {
				f.list = append(f.list, r)
			}
		}
		return nil
	}
	var items []json.RawMessage
	if json.Unmarshal(b, &items) != nil {
		return nil
	}
	for _, it := range items {
		var name string
		var obj struct{ ID, Name string }
		switch {
		case json.Unmarshal(it, &name) == nil:
			f.list = append(f.list, name)
		case json.Unmarshal(it, &obj) == nil && (obj.Name != "" || obj.ID != ""):
			f.list = append(f.list, cmp.Or(obj.Name, obj.ID))
		}
	}
	return nil
}

type flexName struct{ s string }

func (f *flexName) UnmarshalJSON(b []byte) error {
	if json.Unmarshal(b, &f.s) == nil {
		return nil
	}
	var n struct{ First, Middle, Last string }
	if json.Unmarshal(b, &n) == nil {
		f.s = strings.Join(strings.Fields(n.First+" "+n.Middle+" "+n.Last), " ")
	}
	return nil
}

// accountClaim reads the v1 accountid claim of an access token, unverified.
func accountClaim(token string) string {
	var c struct {
		AccountID string `json:"accountid"`
	}
	jwtClaims(token, &c)
	return c.AccountID
}
