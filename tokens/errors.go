package tokens

import "errors"

// The sentinel errors of Validate. Every error Validate returns wraps exactly one of them; test
// with errors.Is. The message of a wrapped error adds a fixed reason written by this package: it
// never holds the token, a claim value or a header value, so it is safe to show to a client (for
// example in a WWW-Authenticate error_description).
var (
	// ErrNotReady means the token needs keys that have not loaded yet: answer 503, not 401.
	ErrNotReady = errors.New("token keys not loaded yet")
	// ErrExpired means the token is well formed but past its exp.
	ErrExpired = errors.New("token expired")
	// ErrInvalid means the token is not acceptable: malformed, badly signed, wrong issuer or
	// audience, refused by introspection.
	ErrInvalid = errors.New("invalid token")
	// ErrUnavailable means the token could not be checked: the introspection endpoint failed,
	// timed out or is saturated. Answer 503; the token may well be valid.
	ErrUnavailable = errors.New("token validation unavailable")
)

// reasonError is a sentinel with a reason that is safe to disclose.
type reasonError struct {
	kind   error
	reason string
}

func (e *reasonError) Error() string { return e.kind.Error() + ": " + e.reason }
func (e *reasonError) Unwrap() error { return e.kind }

func invalid(reason string) error     { return &reasonError{ErrInvalid, reason} }
func expired(reason string) error     { return &reasonError{ErrExpired, reason} }
func unavailable(reason string) error { return &reasonError{ErrUnavailable, reason} }
func notReady(reason string) error    { return &reasonError{ErrNotReady, reason} }

// result names the outcome of a validation for Observer.Validation.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrNotReady):
		return "not_ready"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	default:
		return "invalid"
	}
}
