// Package tokens validates the bearer tokens presented to the gateway.
//
// A token whose unverified iss claim is the configured issuer is verified locally, against keys
// from JWKS URLs, an OIDC discovery document or static public keys, by a strict golang-jwt parser.
// Any other token goes to an introspection endpoint when one is configured (fabric publishes no
// keys for its v1 tokens), else it is invalid. Remote keys load in the background: New does no
// network I/O, and until the keys load Validate answers ErrNotReady for tokens that need them.
//
// Verified tokens and introspection answers are cached, never past the token's exp.
//
// The package never logs or returns in an error a token, a claim value or a header value.
package tokens

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

// MaxTokenSize is the largest token Validate parses; longer ones are refused before parsing.
const MaxTokenSize = 8 << 10

// Defaults of Config and Introspection.
const (
	DefaultLeeway             = 30 * time.Second
	MaxLeeway                 = 60 * time.Second
	DefaultRefreshInterval    = 15 * time.Minute
	DefaultUnknownKIDInterval = time.Minute
	DefaultHTTPTimeout        = 5 * time.Second
	DefaultCacheSize          = 10000
	DefaultIntrospectionTTL   = 5 * time.Minute
	DefaultFailureTTL         = 10 * time.Second
	DefaultMaxConcurrent      = 32
)

// DefaultAlgorithms are the algorithms accepted when Config.Algorithms is empty.
var DefaultAlgorithms = []string{"RS256", "ES256", "PS256", "EdDSA"}

// Config configures a Validator. Zero values take the documented defaults.
type Config struct {
	// Issuer selects local verification: tokens whose (unverified) iss claim equals Issuer are
	// verified against the keys of JWKSURLs, DiscoveryURL and PublicKeys, and their iss must equal
	// it. Every other token goes to introspection when it is configured, else is invalid. Default:
	// DiscoveryURL. Required when keys are configured without discovery.
	Issuer string
	// JWKSURLs are JSON Web Key Set URLs, fetched in the background.
	JWKSURLs []string
	// DiscoveryURL is an issuer URL: GET <DiscoveryURL>/.well-known/openid-configuration names
	// the jwks_uri (its issuer must equal DiscoveryURL). Fetched in the background, retried with
	// backoff until it answers.
	DiscoveryURL string
	// PublicKeys are static keys (ParsePublicKeyPEM reads them from PEM). A static key has no kid:
	// it is tried for tokens without a kid, or whose kid is unknown.
	PublicKeys []crypto.PublicKey
	// Audiences: at least one is required with local verification; the token's aud (a string or
	// an array) must contain one of them.
	Audiences []string
	// Algorithms accepted for local verification. Default: DefaultAlgorithms. none and HS* are
	// refused.
	Algorithms []string
	// Leeway allowed on exp, nbf and iat. Default 30s; more than 60s is refused.
	Leeway time.Duration
	// RefreshInterval is the period of the background key refresh. Default 15m.
	RefreshInterval time.Duration
	// UnknownKIDInterval: a token naming an unknown kid triggers at most one key refetch per
	// interval. Default 1m.
	UnknownKIDInterval time.Duration
	// HTTPClient fetches keys and calls introspection. Default: a client with a 5s timeout that
	// does not follow redirects. Every call is also bounded by the client's Timeout (5s when 0).
	HTTPClient *http.Client
	// CacheSize bounds the verified-token cache and the introspection cache. Default 10000.
	CacheSize int
	// Introspection, when set, checks tokens that cannot be verified locally.
	Introspection *Introspection
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives key refresh failures (Warn) and lifecycle events (Info). Default: none.
	Logger *zap.Logger
	// Observer receives metric events; nil is fine.
	Observer Observer
}

// Introspection configures the check of tokens that cannot be verified locally.
type Introspection struct {
	// URL is called with GET and "Authorization: Bearer <token>": 200 means valid, 401 and 403
	// invalid, anything else (other statuses, network errors, timeouts) unavailable.
	URL string
	// Header holds extra headers sent with each call (x-api-key, x-site-context).
	Header http.Header
	// MaxTTL is how long a valid answer is cached at most, never past the token's exp.
	// Default 5m.
	MaxTTL time.Duration
	// FailureTTL is how long an invalid answer is cached. Default 10s. Unavailable answers are not
	// cached.
	FailureTTL time.Duration
	// MaxConcurrent caps concurrent introspection calls; beyond it Validate answers
	// ErrUnavailable without a call. Default 32.
	MaxConcurrent int
}

// Observer receives metric events. Its methods must be fast and safe for concurrent use.
type Observer interface {
	// JWKSFetch is called once per fetch of a key set or discovery document: "ok" or "error".
	JWKSFetch(result string)
	// UnknownKID is called when a token names a kid we do not have and no static key verifies
	// it; refetched says whether it started a key refetch (false: it joined one in flight, or
	// refetches were rate-limited).
	UnknownKID(refetched bool)
	// Introspection is called once per introspection outcome: "valid", "invalid",
	// "unavailable" (including calls refused by MaxConcurrent) or "cache_hit".
	Introspection(result string)
	// Validation is called once per Validate: "ok", "cache_hit", "expired", "invalid",
	// "not_ready" or "unavailable".
	Validation(result string)
}

type nopObserver struct{}

func (nopObserver) JWKSFetch(string)     {}
func (nopObserver) UnknownKID(bool)      {}
func (nopObserver) Introspection(string) {}
func (nopObserver) Validation(string)    {}

// Identity is a validated token's subject and claims. An Identity may be shared by every request
// that presents the same token: treat it, and its Claims, as read-only.
type Identity struct {
	// Subject is the sub claim, else the v1 "id" claim, else uid.
	Subject string
	// Claims holds every claim of the token's payload (numbers as json.Number, so that large
	// integers keep their digits).
	Claims map[string]any
	// Expiry is the token's exp.
	Expiry time.Time
	// Introspected is true when the introspection endpoint vouched for the token: its claims
	// were not verified by a signature.
	Introspected bool
}

// Validator validates bearer tokens. Create it with New, call Start to load remote keys, Close
// to stop. It is safe for concurrent use.
type Validator struct {
	cfg      Config
	now      func() time.Time
	log      *zap.Logger
	obs      Observer
	client   *http.Client
	timeout  time.Duration
	local    bool
	parser   *jwt.Parser
	static   []verifyKey
	sources  []*source
	keys     atomic.Pointer[keySet]
	keysMu   sync.Mutex // serialises rebuilds of keys
	verified *cache[verifiedEntry]
	intro    *introspector

	refetchMu   sync.Mutex
	refetch     chan struct{} // closed when the unknown-kid refetch in flight ends
	lastRefetch time.Time

	ctx       context.Context
	cancel    context.CancelFunc
	startOnce sync.Once
	mu        sync.Mutex // guards closed and wg.Add
	closed    bool
	wg        sync.WaitGroup
}

// verifiedEntry is a cached local verification. gen is the key-set generation it was verified
// under: a refresh that removes a key starts a new generation, so that tokens signed by a
// withdrawn key stop validating at once rather than at their exp. sig is the signature segment
// that was verified.
type verifiedEntry struct {
	id  *Identity
	gen uint64
	sig string
}

// cacheKey locates a token's verification: the hash of its signed content (header and payload),
// and its signature. Entries are keyed by the content alone, since ECDSA signatures are malleable
// and one token can carry several valid signatures; a hit also needs the signature verified last,
// so that a cached token's content with any other signature (a token "redacted" by cutting its
// signature, say) is verified again rather than trusted.
type cacheKey struct {
	content [32]byte
	sig     string
}

// New checks cfg and builds a Validator. It does no network I/O.
func New(cfg Config) (*Validator, error) {
	cfg.JWKSURLs = slices.Clone(cfg.JWKSURLs)
	cfg.Audiences = slices.Clone(cfg.Audiences)
	cfg.Algorithms = slices.Clone(cfg.Algorithms)
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = slices.Clone(DefaultAlgorithms)
	}
	for _, a := range cfg.Algorithms {
		switch {
		case strings.EqualFold(a, "none"):
			return nil, errors.New(`algorithm "none" is refused`)
		case strings.HasPrefix(strings.ToUpper(a), "HS"):
			return nil, fmt.Errorf("algorithm %q is refused: shared-secret algorithms are not supported", a)
		case !slices.Contains(signatureAlgs, a):
			return nil, fmt.Errorf("unknown algorithm %q (want one of %s)", a, strings.Join(signatureAlgs, ", "))
		}
	}
	switch {
	case cfg.Leeway < 0:
		return nil, errors.New("leeway must not be negative")
	case cfg.Leeway > MaxLeeway:
		return nil, fmt.Errorf("leeway %s is more than %s", cfg.Leeway, MaxLeeway)
	case cfg.Leeway == 0:
		cfg.Leeway = DefaultLeeway
	}
	if cfg.RefreshInterval < 0 || cfg.UnknownKIDInterval < 0 || cfg.CacheSize < 0 {
		return nil, errors.New("refresh interval, unknown kid interval and cache size must not be negative")
	}
	cfg.RefreshInterval = cmp.Or(cfg.RefreshInterval, DefaultRefreshInterval)
	cfg.UnknownKIDInterval = cmp.Or(cfg.UnknownKIDInterval, DefaultUnknownKIDInterval)
	cfg.CacheSize = cmp.Or(cfg.CacheSize, DefaultCacheSize)
	for _, u := range cfg.JWKSURLs {
		if err := checkURL(u); err != nil {
			return nil, fmt.Errorf("jwks url: %w", err)
		}
	}
	if cfg.DiscoveryURL != "" {
		if err := checkURL(cfg.DiscoveryURL); err != nil {
			return nil, fmt.Errorf("discovery url: %w", err)
		}
	}
	v := &Validator{
		cfg: cfg, now: cfg.Now, log: cfg.Logger, obs: cfg.Observer, client: cfg.HTTPClient,
		verified: newCache[verifiedEntry](cfg.CacheSize),
	}
	for i, k := range cfg.PublicKeys {
		vk, err := newVerifyKey("", "", k)
		if err != nil {
			return nil, fmt.Errorf("public key %d: %w", i+1, err)
		}
		v.static = append(v.static, vk)
	}
	v.local = len(cfg.JWKSURLs) > 0 || cfg.DiscoveryURL != "" || len(v.static) > 0
	if v.local {
		if v.cfg.Issuer == "" {
			v.cfg.Issuer = cfg.DiscoveryURL
		}
		if v.cfg.Issuer == "" {
			return nil, errors.New("issuer is required with jwks urls or public keys")
		}
		if len(cfg.Audiences) == 0 || slices.Contains(cfg.Audiences, "") {
			return nil, errors.New("at least one non-empty audience is required with local verification")
		}
	} else if cfg.Issuer != "" {
		return nil, errors.New("issuer is set but no jwks url, discovery url or public key is")
	}
	if cfg.Introspection == nil && !v.local {
		return nil, errors.New("no key source and no introspection configured: every token would be refused")
	}
	if cfg.Introspection != nil {
		in, err := newIntrospector(*cfg.Introspection, cfg.CacheSize)
		if err != nil {
			return nil, fmt.Errorf("introspection: %w", err)
		}
		v.intro = in
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = zap.NewNop()
	}
	if v.obs == nil {
		v.obs = nopObserver{}
	}
	if v.client == nil {
		v.client = &http.Client{
			Timeout:       DefaultHTTPTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	v.timeout = cmp.Or(v.client.Timeout, DefaultHTTPTimeout)
	for _, u := range cfg.JWKSURLs {
		v.sources = append(v.sources, &source{jwksURL: u})
	}
	if cfg.DiscoveryURL != "" {
		v.sources = append(v.sources, &source{discovery: cfg.DiscoveryURL})
	}
	v.parser = jwt.NewParser(
		jwt.WithValidMethods(v.cfg.Algorithms),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithIssuer(v.cfg.Issuer),
		jwt.WithAudience(v.cfg.Audiences...),
		jwt.WithLeeway(v.cfg.Leeway),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(v.now),
		jwt.WithJSONNumber(),
	)
	v.ctx, v.cancel = context.WithCancel(context.Background())
	v.rebuildKeys()
	return v, nil
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http or https URL", s)
	}
	return nil
}

// Start starts the background key loads and refreshes. It is idempotent, returns at once, and
// does nothing after Close.
func (v *Validator) Start() {
	v.startOnce.Do(func() {
		for _, s := range v.sources {
			if !v.goTracked(func() { v.run(s) }) {
				return
			}
		}
	})
}

// Close stops the background work and waits for it. It is idempotent, and a no-op on a nil
// Validator (what a failed New returns).
func (v *Validator) Close() {
	if v == nil {
		return
	}
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	v.cancel()
	v.wg.Wait()
}

// goTracked runs f in a goroutine that Close waits for. It reports false after Close.
func (v *Validator) goTracked(f func()) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		f()
	}()
	return true
}

// Ready reports whether every remote key source has loaded once (true when there are none).
func (v *Validator) Ready() bool { return v.keys.Load().ready }

// Validate validates a bearer token (without the "Bearer " prefix). The error wraps ErrNotReady,
// ErrExpired, ErrInvalid or ErrUnavailable. ctx bounds the wait for a key refetch or an
// introspection call that the request joins.
func (v *Validator) Validate(ctx context.Context, raw string) (*Identity, error) {
	id, res, err := v.validate(ctx, raw)
	if res == "" {
		res = result(err)
	}
	v.obs.Validation(res)
	return id, err
}

// validate returns the identity, or an error, and the Validation result when it is not
// result(err).
func (v *Validator) validate(ctx context.Context, raw string) (*Identity, string, error) {
	if len(raw) > MaxTokenSize {
		return nil, "", invalid("token exceeds 8 KiB")
	}
	dot1, dot2, err := splitToken(raw)
	if err != nil {
		return nil, "", err
	}
	now := v.now()
	var key cacheKey
	if v.local {
		key = cacheKey{sum256(raw[:dot2]), raw[dot2+1:]}
		if e, ok := v.verified.get(key.content, now); ok && e.gen == v.keys.Load().gen && e.sig == key.sig {
			return e.id, "cache_hit", nil
		}
	}
	var hdr map[string]any
	if err := decodeSegment(raw[:dot1], &hdr); err != nil {
		return nil, "", invalid("malformed header")
	}
	var claims map[string]any
	if err := decodeSegment(raw[dot1+1:dot2], &claims); err != nil {
		return nil, "", invalid("malformed payload")
	}
	iss, isString := claims["iss"].(string)
	if _, present := claims["iss"]; present && !isString {
		return nil, "", invalid("iss claim is not a string")
	}
	switch {
	case v.local && iss == v.cfg.Issuer:
		return v.verifyLocal(ctx, raw, hdr, key, now)
	case v.intro != nil:
		return v.introspect(ctx, raw, claims, now)
	}
	return nil, "", invalid("issuer not accepted")
}

// splitToken checks that raw is three non-empty base64url segments and returns the positions
// of the two dots. Anything else (padding, the standard alphabet, whitespace) is refused here:
// Go's base64 decoder would skip newlines.
func splitToken(raw string) (dot1, dot2 int, err error) {
	dots := 0
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.':
			dots++
			switch dots {
			case 1:
				dot1 = i
			case 2:
				dot2 = i
			default:
				return 0, 0, invalid("token must have three segments")
			}
		default:
			return 0, 0, invalid("token has a character outside base64url")
		}
	}
	switch {
	case dots != 2:
		return 0, 0, invalid("token must have three segments")
	case dot1 == 0 || dot2 == dot1+1 || dot2 == len(raw)-1:
		return 0, 0, invalid("token has an empty segment")
	}
	return dot1, dot2, nil
}

// sum256 is sha256.Sum256 of s without a heap copy for the usual sizes of header and payload.
func sum256(s string) [32]byte {
	var buf [2048]byte
	if len(s) > len(buf) {
		return sha256.Sum256([]byte(s))
	}
	return sha256.Sum256(append(buf[:0], s...))
}

var segmentEncoding = base64.RawURLEncoding.Strict()

// decodeSegment decodes a base64url JSON object, numbers as json.Number.
func decodeSegment(seg string, dst *map[string]any) error {
	b, err := segmentEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if _, err := dec.Token(); *dst == nil || err != io.EOF {
		return errors.New("not a single JSON object")
	}
	return nil
}

// verifyLocal verifies a token of our issuer with our keys.
func (v *Validator) verifyLocal(ctx context.Context, raw string, hdr map[string]any, key cacheKey, now time.Time) (*Identity, string, error) {
	alg, _ := hdr["alg"].(string)
	if !slices.Contains(v.cfg.Algorithms, alg) {
		return nil, "", invalid("algorithm not accepted")
	}
	if _, ok := hdr["crit"]; ok {
		return nil, "", invalid("crit header not supported")
	}
	// jku, x5u, jwk and x5c are never read: keys come from configuration only.
	kid, hasKID := "", false
	if k, ok := hdr["kid"]; ok {
		if kid, hasKID = k.(string); !hasKID {
			return nil, "", invalid("kid is not a string")
		}
	}
	ks := v.keys.Load()
	keys, known := ks.candidates(kid, hasKID, alg)
	claims, err := v.parse(raw, keys)
	if !errors.Is(err, errSignature) && !errors.Is(err, errNoKey) {
		return v.accept(claims, err, key, ks.gen, now)
	}
	if !ks.ready {
		return nil, "", notReady("signing keys not loaded yet") // the key may be in what is loading
	}
	if known {
		return nil, "", err
	}
	// An unknown kid that no static key verifies: one refetch, when allowed.
	started, waited := v.refetchKeys(ctx)
	v.obs.UnknownKID(started)
	if !waited {
		return nil, "", invalid("unknown key id")
	}
	ks = v.keys.Load()
	if keys, known = ks.candidates(kid, hasKID, alg); !known {
		return nil, "", invalid("unknown key id")
	}
	claims, err = v.parse(raw, keys)
	return v.accept(claims, err, key, ks.gen, now)
}

// errSignature and errNoKey are the failures that other keys might not have had.
var (
	errSignature error = &reasonError{ErrInvalid, "signature invalid"}
	errNoKey     error = &reasonError{ErrInvalid, "no key fits the token's algorithm"}
)

// parse runs the strict parser with keys and maps its errors to ours.
func (v *Validator) parse(raw string, keys []*verifyKey) (jwt.MapClaims, error) {
	if len(keys) == 0 {
		return nil, errNoKey
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) {
		if len(keys) == 1 {
			return keys[0].key, nil
		}
		set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, len(keys))}
		for i, k := range keys {
			set.Keys[i] = k.key
		}
		return set, nil
	})
	if err == nil {
		return claims, nil
	}
	return nil, parseError(err, claims)
}

// parseError maps a golang-jwt error to a sentinel with a fixed reason. A token that fails a
// check besides exp is invalid, not expired: refreshing it would not help.
func parseError(err error, claims jwt.MapClaims) error {
	missing := func(name string) bool { v, ok := claims[name]; return !ok || v == nil }
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return errSignature
	case errors.Is(err, jwt.ErrTokenMalformed), errors.Is(err, jwt.ErrTokenUnverifiable):
		return invalid("malformed token")
	case errors.Is(err, jwt.ErrInvalidType):
		return invalid("a registered claim has the wrong type")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && missing("exp"):
		return invalid("exp claim missing")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && missing("aud"):
		return invalid("aud claim missing")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return invalid("required claim missing")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return invalid("audience not accepted")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return invalid("issuer not accepted")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return invalid("token not valid yet (nbf)")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return invalid("token issued in the future (iat)")
	case errors.Is(err, jwt.ErrTokenExpired):
		return expired("exp is in the past")
	}
	return invalid("token rejected")
}

// accept turns a parse result into an identity and caches it until exp.
func (v *Validator) accept(claims jwt.MapClaims, err error, key cacheKey, gen uint64, now time.Time) (*Identity, string, error) {
	if err != nil {
		return nil, "", err
	}
	exp, ok := numericDate(claims["exp"]) // present: the parser required it
	if !ok {
		return nil, "", invalid("exp claim out of range")
	}
	id := &Identity{Subject: subject(claims), Claims: claims, Expiry: exp}
	v.verified.put(key.content, verifiedEntry{id, gen, strings.Clone(key.sig)}, exp, now)
	return id, "", nil
}

// subject is sub, else the v1 id claim, else uid.
func subject(claims map[string]any) string {
	for _, name := range []string{"sub", "id", "uid"} {
		switch s := claims[name].(type) {
		case string:
			if s != "" {
				return s
			}
		case json.Number:
			return s.String()
		}
	}
	return ""
}

// numericDate reads a NumericDate claim (json.Number or float64) as golang-jwt does: 0 is the
// epoch. Absent, malformed or absurd values are not ok.
func numericDate(v any) (time.Time, bool) {
	var f float64
	switch n := v.(type) {
	case json.Number:
		var err error
		if f, err = n.Float64(); err != nil {
			return time.Time{}, false
		}
	case float64:
		f = n
	default:
		return time.Time{}, false
	}
	if math.IsNaN(f) || math.Abs(f) > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}
