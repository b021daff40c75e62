package emulator

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenKind says what a token may be used for. The wire format does not say (a v1 refresh token
// looks like an access token), so the emulator remembers the kind of every token it issued.
type tokenKind string

const (
	kindV1Access     tokenKind = "v1.access"
	kindV1Refresh    tokenKind = "v1.refresh"
	kindReset        tokenKind = "v1.reset"
	kindOAuthAccess  tokenKind = "oauth2.access" // a user's access token
	kindOAuthClient  tokenKind = "oauth2.client" // a client_credentials token
	kindOAuthID      tokenKind = "oauth2.id"
	kindOAuthRefresh tokenKind = "oauth2.refresh"
	kindECE          tokenKind = "ece.session"
)

// token is what the emulator remembers of a token it issued.
type token struct {
	kind     tokenKind
	userID   string // empty for client tokens
	clientID string
	scopes   []string
	exp      time.Time
	// family groups the tokens that descend from one login: an ECE session, an OAuth2 grant.
	family string
	// used marks a refresh token (or ECE token) already exchanged under rotation.
	used    bool
	revoked bool
}

var (
	errTokenInvalid = errors.New("token is invalid")
	errTokenExpired = errors.New("token is expired")
	errTokenReused  = errors.New("token was already exchanged")
	errUserInactive = errors.New("user is deactivated")
)

// sweepEvery is how many tokens are minted between sweeps of expired records.
const sweepEvery = 1024

// randomString returns n random bytes, base64url-encoded.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return b64(b)
}

// mint signs claims as an RS256 JWT with the current key's kid and remembers rec under a fresh jti
// (added to claims). It returns the compact token.
func (e *Emulator) mint(claims jwt.MapClaims, rec token) string {
	jti, _ := claims["jti"].(string)
	if jti == "" {
		jti = randomString(16)
		claims["jti"] = jti
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	signer := e.keys.signer()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	t.Header["kid"] = signer.kid
	s, err := t.SignedString(signer.key)
	if err != nil {
		// Signing with an in-memory RSA key only fails on a programming error.
		panic(fmt.Sprintf("emulator: signing token: %v", err))
	}
	e.remember(jti, rec)
	return s
}

// opaque issues a random, unstructured token (Okta's refresh tokens are opaque) and remembers rec.
func (e *Emulator) opaque(rec token) string {
	v := randomString(32)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.remember(v, rec)
	return v
}

// remember stores rec under key and now and then forgets expired records. Callers hold e.mu.
func (e *Emulator) remember(key string, rec token) {
	r := rec
	e.tokens[key] = &r
	e.minted++
	if e.minted%sweepEvery == 0 {
		now := e.now()
		for k, t := range e.tokens {
			if now.After(t.exp.Add(time.Hour)) {
				delete(e.tokens, k)
			}
		}
	}
}

// key returns the map key of a presented token: the jti of a JWT whose signature verifies, or the
// value itself for opaque tokens. ok is false when the token is a JWT that does not verify.
func (e *Emulator) key(raw string) (k string, ok bool) {
	if strings.Count(raw, ".") != 2 {
		return raw, true
	}
	claims := jwt.MapClaims{}
	// Expiry is checked against the emulator's clock on the remembered record, so that a skewed
	// clock is honoured in one place.
	p := jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation())
	_, err := p.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		e.mu.Lock()
		defer e.mu.Unlock()
		if pub, ok := e.keys.public(kid); ok {
			return pub, nil
		}
		return nil, errors.New("unknown kid")
	})
	if err != nil {
		return "", false
	}
	jti, _ := claims["jti"].(string)
	return jti, jti != ""
}

// check returns the record of a token the emulator issued, if it is one of kinds, not revoked, not
// expired, and its user is active. The record is a copy.
func (e *Emulator) check(raw string, kinds ...tokenKind) (token, error) {
	return e.use(raw, false, kinds...)
}

// redeem is check for a refresh token that is being exchanged. Under rotation it marks the token
// used, and a token already used is rejected with errTokenReused (and counted as reuse).
func (e *Emulator) redeem(raw string, kinds ...tokenKind) (token, error) {
	return e.use(raw, !e.cfg.KeepRefreshTokens, kinds...)
}

func (e *Emulator) use(raw string, consume bool, kinds ...tokenKind) (token, error) {
	if raw == "" {
		return token{}, errTokenInvalid
	}
	k, ok := e.key(raw)
	if !ok {
		return token{}, errTokenInvalid
	}
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	rec, found := e.tokens[k]
	if !found || rec.revoked || !hasKind(kinds, rec.kind) {
		return token{}, errTokenInvalid
	}
	if !now.Before(rec.exp) {
		return token{}, errTokenExpired
	}
	if rec.userID != "" {
		if u := e.users[rec.userID]; u == nil || !u.active {
			return token{}, errUserInactive
		}
	}
	if rec.used && consume {
		e.control.reused()
		return token{}, errTokenReused
	}
	if consume {
		rec.used = true
	}
	return *rec, nil
}

func hasKind(kinds []tokenKind, k tokenKind) bool {
	for _, want := range kinds {
		if want == k {
			return true
		}
	}
	return false
}

// revoke revokes one token. It reports whether the token was known.
func (e *Emulator) revoke(raw string) bool {
	k, ok := e.key(raw)
	if !ok {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	rec, found := e.tokens[k]
	if found {
		rec.revoked = true
	}
	return found
}

// revokeFamily revokes every token descending from one login.
func (e *Emulator) revokeFamily(family string) {
	if family == "" {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, t := range e.tokens {
		if t.family == family {
			t.revoked = true
		}
	}
}

// bearer returns the credential of an Authorization header: the value after "Bearer " (scheme
// case-insensitive), or, when raw is allowed (fabric v1 accepts it), a bare JWT.
func bearer(r *http.Request, raw bool) string {
	h := r.Header.Get("Authorization")
	if scheme, v, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(v)
	}
	if raw && strings.Count(h, ".") == 2 && !strings.Contains(h, " ") {
		return h
	}
	return ""
}
