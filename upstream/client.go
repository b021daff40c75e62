// Package upstream holds sitegate's clients for fabric Identity: one file per dialect (fabric v1,
// ECE, and OAuth2 for Identity v2/v3), each signing users in (with a password, or for OAuth2 by
// exchanging the code of a browser login) and refreshing their tokens. Every call has a timeout and a cap on
// the answer's size, and fails with a typed error: ErrRejected when Identity refused the
// credentials (the session is over), ErrUnavailable for anything else (network, timeout, 5xx, an
// answer sitegate cannot read: the session must be kept). Errors never hold a token, a password or
// anything else a user sent.
package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

var (
	// ErrRejected means Identity refused the credentials: wrong password, a refresh token that
	// is invalid, expired or already rotated, a deactivated user.
	ErrRejected = errors.New("identity rejected the credentials")
	// ErrUnavailable means Identity could not be asked or its answer could not be used.
	ErrUnavailable = errors.New("identity unavailable")
)

// Error is a failed identity call. It wraps ErrRejected or ErrUnavailable; Code is Identity's
// error code when it sent one (LOCAL_AUTH_FAILED, root.unauthorized), Status the HTTP status (0
// without an answer).
type Error struct {
	kind   error
	Status int
	Code   string
	reason string
}

func (e *Error) Error() string {
	msg := e.kind.Error() + ": " + e.reason
	if e.Status != 0 {
		msg += fmt.Sprintf(" (status %d", e.Status)
		if e.Code != "" {
			msg += " " + e.Code
		}
		msg += ")"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.kind }

// Tokens is what a login or a refresh yields.
type Tokens struct {
	AccessToken  string
	AccessExpiry time.Time
	// RefreshToken is empty for dialects that refresh with the access token (ECE).
	RefreshToken  string
	RefreshExpiry time.Time // zero when unknown
	User          User
}

// User is who signed in, as Identity described them.
type User struct {
	ID      string
	Name    string
	Account string
	Type    string
	Roles   []string
}

// Options configures a client.
type Options struct {
	// BaseURL is Identity's base, e.g. https://prod01-apigw.acme.fabric.zone. Required.
	BaseURL string
	// APIKey is sent as x-api-key when set (fabric v1).
	APIKey string
	// SiteContext is the x-site-context sent with fabric v1 calls; required by fabric v1.
	SiteContext string
	// Timeout bounds each call. Default: 10s.
	Timeout time.Duration
	// HTTPClient is used for the calls. Default: a dedicated client (never http.DefaultClient)
	// that does not follow redirects.
	HTTPClient *http.Client
}

// maxAnswer caps what is read of an answer.
const maxAnswer = 256 << 10

// caller is what every dialect shares: the base URL, the HTTP client, the timeout.
type caller struct {
	base    *url.URL
	opts    Options
	client  *http.Client
	timeout time.Duration
}

func newCaller(o Options) (*caller, error) {
	u, err := url.Parse(strings.TrimSuffix(o.BaseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("identity base URL %q is not an absolute http or https URL", o.BaseURL)
	}
	c := &caller{base: u, opts: o, client: o.HTTPClient, timeout: o.Timeout}
	if c.timeout <= 0 {
		c.timeout = 10 * time.Second
	}
	if c.client == nil {
		c.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return c, nil
}

// answer is an identity response: its status and (capped) body.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// call sends a JSON body (nil for none) and returns the answer, or an ErrUnavailable *Error when
// there is none.
func (c *caller) call(ctx context.Context, method, path string, header http.Header, body any) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, &Error{kind: ErrUnavailable, reason: "encoding the request"}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return nil, &Error{kind: ErrUnavailable, reason: "building the request"}
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.do(req, path)
}

// do sends req, named what in errors, and reads its answer, capped at maxAnswer; without an
// answer it returns an ErrUnavailable *Error, which names what and the cause, never the body or
// headers.
func (c *caller) do(req *http.Request, what string) (*answer, error) {
	req.Header.Set("Accept", "application/json")
	res, err := c.client.Do(req)
	if err != nil {
		return nil, &Error{kind: ErrUnavailable, reason: "calling " + what + ": " + causeOf(err)}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxAnswer+1))
	if err != nil {
		return nil, &Error{kind: ErrUnavailable, Status: res.StatusCode, reason: "reading the answer of " + what + ": " + causeOf(err)}
	}
	if len(b) > maxAnswer {
		return nil, &Error{kind: ErrUnavailable, Status: res.StatusCode, reason: "answer of " + what + " larger than 256 KiB"}
	}
	return &answer{status: res.StatusCode, header: res.Header, body: b}, nil
}

// causeOf describes a transport error without the URL's query or anything sent.
func causeOf(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return err.Error()
}

// jwtClaims decodes the payload of a JWT into v without verifying it: sitegate reads the exp of
// the tokens Identity hands it to schedule refreshes (never to extend them), and the claims that
// name the user. It reports false when token is not a JWT with a JSON payload.
func jwtClaims(token string, v any) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	return err == nil && json.Unmarshal(payload, v) == nil
}

// jwtExpiry reads the exp claim of a JWT, unverified. ok is false without a numeric exp.
func jwtExpiry(token string) (time.Time, bool) {
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if !jwtClaims(token, &claims) || claims.Exp == nil {
		return time.Time{}, false
	}
	sec, err := claims.Exp.Float64()
	if err != nil || sec <= 0 || sec > 1<<40 {
		return time.Time{}, false
	}
	return time.Unix(int64(sec), 0), true
}
