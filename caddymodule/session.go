package caddymodule

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/upstream"
)

// Identity is an identity service: the one users sign in to through the gateway's endpoints
// (setting it turns sessions on), or the one the sidecar gets its service token from.
type Identity struct {
	// Dialect is the identity protocol: fabric_v1, ece or oauth2. Required.
	Dialect string `json:"dialect"`
	// URL is the service's base URL, e.g. https://prod01-apigw.acme.fabric.zone; for oauth2 the
	// authorization server (issuer), e.g. https://acme.login.fabric.inc/oauth2/default. Required.
	URL string `json:"url"`
	// APIKey is sent as x-api-key (fabric_v1). Placeholders such as {env.FABRIC_API_KEY} are
	// resolved when the config loads, as in every secret below.
	APIKey string `json:"api_key,omitempty"`

	// ClientID and ClientSecret identify the OAuth2 app (oauth2). A user app without a secret
	// is a public client (PKCE only); a system app (the sidecar) needs the secret.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`
	// Scopes asked for (oauth2). Default: openid offline_access for users, s2s for the sidecar.
	Scopes []string `json:"scopes,omitempty"`
	// AuthorizeURL, TokenURL and RevokeURL override the endpoints of the issuer's OIDC
	// discovery document (oauth2).
	AuthorizeURL string `json:"authorize_url,omitempty"`
	TokenURL     string `json:"token_url,omitempty"`
	RevokeURL    string `json:"revoke_url,omitempty"`
	// RedirectURI is the gateway's callback as registered with the OAuth2 app. Default: the
	// request's scheme and host, then the endpoints prefix and /callback.
	RedirectURI string `json:"redirect_uri,omitempty"`

	// Username and Password are the service user the sidecar signs in as (fabric_v1, ece).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// Timeout bounds each identity call. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// MaxConcurrent caps this instance's concurrent identity calls (logins and refreshes); beyond
	// it, a login gets 503 and a refresh is put off. Default: 64.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
}

// Sessions configures server-side sessions.
type Sessions struct {
	// Redis keeps sessions in Redis, shared by every instance. Default: this process's memory
	// (one instance; sessions survive config reloads, not restarts).
	Redis *Redis `json:"redis,omitempty"`
	// Keys seal the tokens in stored sessions: 32 bytes each, base64 (std or url) or hex,
	// usually {env.SITEGATE_SESSION_KEY}. The first seals, every one opens. To rotate across
	// replicas: add the new key second everywhere, then move it first, then drop the old one a
	// lifetime later. Required with Redis; the memory store makes up a key when none is given.
	Keys []string `json:"keys,omitempty"`
	// IdleTimeout ends a session after this long without a request. Default: 30m.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// Lifetime ends a session this long after sign-in, whatever its activity. Default: 12h.
	Lifetime caddy.Duration `json:"lifetime,omitempty"`
	// RefreshBefore refreshes the access token when it expires within this window. Default: 60s.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`
	// Cookie is the session cookie's name. Default: __Host-sitegate (HttpOnly, Secure,
	// SameSite=Lax, Path=/).
	Cookie string `json:"cookie,omitempty"`
	// Endpoints is the path prefix of login, logout, session and healthz. Default: /.sitegate.
	Endpoints string `json:"endpoints,omitempty"`
	// AllowOrigins are origins (scheme://host[:port]) besides the request's own host from which
	// browsers may call login and logout, and to which a sign-in may send the browser back.
	AllowOrigins []string `json:"allow_origins,omitempty"`
	// LoginRedirect sends a browser navigation (GET or HEAD accepting text/html) that has no
	// session to the sign-in instead of answering 401 (oauth2). API requests still get 401.
	LoginRedirect bool `json:"login_redirect,omitempty"`
}

// Redis selects the Redis deployment: url (standalone), master_name with sentinels, or
// cluster.
type Redis struct {
	// URL is redis://[user:password@]host[:port][/db] or rediss:// for TLS.
	URL string `json:"url,omitempty"`
	// MasterName and Sentinels select a Sentinel-managed master.
	MasterName string   `json:"master_name,omitempty"`
	Sentinels  []string `json:"sentinels,omitempty"`
	// Cluster lists seed nodes of a Redis Cluster (host:port).
	Cluster []string `json:"cluster,omitempty"`
	// Username and Password authenticate (ACL); they override the URL's. Placeholders are
	// resolved when the config loads.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// DB selects a database (not with Cluster).
	DB int `json:"db,omitempty"`
	// TLS connects with TLS (implied by rediss://).
	TLS bool `json:"tls,omitempty"`
	// KeyPrefix starts every key sitegate writes. Default: sitegate:.
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Timeout bounds every store operation, retries included. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// DisableIdentity skips CLIENT SETINFO, for Redis before 7.2 and managed services that
	// refuse it.
	DisableIdentity bool `json:"disable_identity,omitempty"`
}

// Defaults of the session options.
const (
	defaultCookie        = "__Host-sitegate"
	defaultEndpoints     = "/.sitegate"
	defaultRefreshBefore = 60 * time.Second
	defaultIdentityCalls = 64
	// coolOff is how long a session waits after a refresh found Identity unavailable before
	// trying again; it matches the Retry-After of the 503.
	coolOff = retryAfter * time.Second
	// forcedEvery bounds the refreshes an upstream's 401 may force, per session.
	forcedEvery = time.Minute
)

// dialects are the identity protocols sitegate speaks.
var dialects = []string{"fabric_v1", "ece", "oauth2"}

// identityClient is a dialect's client (upstream.FabricV1, upstream.ECE, upstream.OAuth2): every
// one refreshes tokens.
type identityClient interface {
	Refresh(ctx context.Context, t *upstream.Tokens) (*upstream.Tokens, error)
}

// passwordClient also signs users in with a password (fabric_v1, ece).
type passwordClient interface {
	identityClient
	Login(ctx context.Context, username, password string) (*upstream.Tokens, error)
}

// client builds the dialect's client, resolving the placeholders in URLs and secrets.
// siteContext is the x-site-context of fabric_v1's calls.
func (id *Identity) client(siteContext string) (identityClient, error) {
	var err error
	resolve := func(what, v string) string {
		r, rerr := resolvePlaceholders(what, v)
		err = cmp.Or(err, rerr)
		return r
	}
	base := resolve("identity", id.URL)
	timeout := time.Duration(id.Timeout)
	var c identityClient
	switch id.Dialect {
	case "fabric_v1", "ece":
		uo := upstream.Options{BaseURL: base, APIKey: resolve("api_key", id.APIKey), SiteContext: siteContext, Timeout: timeout}
		if err != nil {
			return nil, err
		}
		if id.Dialect == "ece" {
			c, err = upstream.NewECE(uo)
		} else {
			c, err = upstream.NewFabricV1(uo)
		}
	case "oauth2":
		oo := upstream.OAuth2Options{
			Issuer: base, ClientID: resolve("client_id", id.ClientID), ClientSecret: resolve("client_secret", id.ClientSecret),
			AuthorizeURL: resolve("authorize_url", id.AuthorizeURL), TokenURL: resolve("token_url", id.TokenURL),
			RevokeURL: resolve("revoke_url", id.RevokeURL), Timeout: timeout,
		}
		if err != nil {
			return nil, err
		}
		c, err = upstream.NewOAuth2(oo)
	default:
		return nil, fmt.Errorf("identity: unknown dialect %q (want fabric_v1, ece or oauth2)", id.Dialect)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return c, nil
}

// sessionGate is the session machinery of one handler.
type sessionGate struct {
	backend    *backend
	backendKey string
	idp        identityClient
	// endSession ends a session at Identity too: ECE's logout, OAuth2's revocation; nil for
	// fabric_v1, which has neither.
	endSession    func(ctx context.Context, t *upstream.Tokens) error
	oauth         *oauthLogin // browser sign-in (oauth2)
	loginRedirect bool        // send navigations without a session to the sign-in (oauth2)
	dialect       string
	calls         chan struct{} // semaphore of identity calls
	refreshBefore time.Duration
	touchEvery    time.Duration
	idleTimeout   time.Duration
	cookie        string
	prefix        string
	origins       map[string]bool
	accountClaim  string // the claim the site context builder reads the account from
	logger        *zap.Logger
}

// backend is a store with its refresher and per-session throttles, shared in a UsagePool by
// every handler with the same store configuration and across reloads, so that sessions in
// memory survive a reload and in-process single-flight spans handlers.
type backend struct {
	store     sessions.LockingStore
	refresher *sessions.Refresher
	keys      *sessions.KeyRing // seals the OAuth2 login state cookie
	redisKey  string            // pool key of the Redis it uses; "" for memory

	touching sync.Map // session ID → struct{}: a touch is in flight
	mu       sync.Mutex
	cooling  map[string]time.Time // session ID → end of its cool-off
	forced   map[string]time.Time // session ID → when a forced refresh may run again
}

func (b *backend) Destruct() error {
	err := b.store.Close()
	if b.redisKey != "" {
		if _, derr := redisPools.Delete(b.redisKey); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	return err
}

// allow reports whether the per-session throttle m lets a call run now, and if so arms it for
// d. Expired entries are dropped as they are met, so the maps stay as small as the set of
// sessions in trouble.
func (b *backend) allow(m map[string]time.Time, id string, now time.Time, d time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if until, ok := m[id]; ok && now.Before(until) {
		return false
	}
	for k, until := range m {
		if !now.Before(until) {
			delete(m, k)
		}
	}
	if d > 0 {
		m[id] = now.Add(d)
	}
	return true
}

// coolingOff reports whether the session is in a cool-off after an unavailable refresh.
func (b *backend) coolingOff(id string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok := b.cooling[id]
	return ok && now.Before(until)
}

var (
	// redisPools shares Redis connection pools across handlers and reloads; the last user's
	// Cleanup closes a pool.
	redisPools = caddy.NewUsagePool()
	// backends shares stores and refreshers likewise.
	backends = caddy.NewUsagePool()

	redisLoggerOnce sync.Once
)

type pooledRedis struct{ *sessions.Redis }

func (p pooledRedis) Destruct() error { return p.Close() }

// redisLogger routes go-redis's process-wide logger into zap.
type redisLogger struct{ l *zap.Logger }

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	r.l.Warn(fmt.Sprintf(format, v...))
}

// provisionSessions builds the session gate; h.sites is ready.
func (h *Handler) provisionSessions() error {
	id := h.Identity
	cfg := h.Session
	if cfg == nil {
		cfg = &Sessions{}
	}
	g := &sessionGate{
		dialect:       id.Dialect,
		refreshBefore: cmp.Or(time.Duration(cfg.RefreshBefore), defaultRefreshBefore),
		cookie:        cmp.Or(cfg.Cookie, defaultCookie),
		prefix:        strings.TrimSuffix(cmp.Or(cfg.Endpoints, defaultEndpoints), "/"),
		calls:         make(chan struct{}, cmp.Or(id.MaxConcurrent, defaultIdentityCalls)),
		origins:       map[string]bool{},
		loginRedirect: cfg.LoginRedirect,
		accountClaim:  "accountid",
		logger:        h.logger,
	}
	if h.SiteContext != nil && h.SiteContext.AccountClaim != "" {
		g.accountClaim = h.SiteContext.AccountClaim
	}
	for _, o := range cfg.AllowOrigins {
		g.origins[strings.ToLower(o)] = true
	}

	siteContext := ""
	if id.Dialect == "fabric_v1" {
		site, err := h.sites.Build(nil, nil)
		if err != nil {
			return fmt.Errorf("identity fabric_v1: %w", err)
		}
		siteContext = site.Value
	}
	var err error
	if g.idp, err = id.client(siteContext); err != nil {
		return err
	}
	switch c := g.idp.(type) {
	case *upstream.ECE:
		g.endSession = c.Logout
	case *upstream.OAuth2:
		g.endSession = c.Revoke
		if g.oauth, err = newOAuthLogin(id, c, g.cookie); err != nil {
			return err
		}
	}

	opts := sessions.Options{
		IdleTimeout: time.Duration(cfg.IdleTimeout),
		Lifetime:    time.Duration(cfg.Lifetime),
		Logger:      h.logger.Named("sessions"),
	}
	opts.TouchEvery = min(sessions.DefaultTouchEvery, cmp.Or(time.Duration(cfg.IdleTimeout), sessions.DefaultIdleTimeout)/2)
	g.touchEvery = opts.TouchEvery
	g.idleTimeout = cmp.Or(opts.IdleTimeout, sessions.DefaultIdleTimeout)
	var keyIDs []string
	if opts.Keys, keyIDs, err = keyRing(cfg.Keys); err != nil {
		return fmt.Errorf("session: %w", err)
	}

	var ro *sessions.RedisOptions
	var redisKey string
	if cfg.Redis != nil {
		if ro, err = redisOptions(cfg.Redis); err != nil {
			return err
		}
		if redisKey, err = redisFingerprint(ro); err != nil {
			return err
		}
	}
	// Handlers share a memory store only when they front the same identity service.
	key, err := hashJSON("backend", redisKey, keyIDs, opts.IdleTimeout, opts.Lifetime, id.Dialect, id.URL)
	if err != nil {
		return err
	}
	v, _, err := backends.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newBackend(ro, redisKey, opts, h.logger)
	})
	if err != nil {
		return err
	}
	g.backend, g.backendKey = v.(*backend), key
	h.gate = g
	return nil
}

// newBackend builds a backend on the memory store, or on Redis (ro, whose pool key is rkey).
func newBackend(ro *sessions.RedisOptions, rkey string, opts sessions.Options, logger *zap.Logger) (*backend, error) {
	if opts.Keys == nil { // memory only (Redis needs keys): a key of this process's own
		kr, err := sessions.NewKeyRing(randomBytes(32))
		if err != nil {
			return nil, err
		}
		opts.Keys = kr
	}
	store, err := openStore(ro, rkey, opts, logger)
	if err != nil {
		return nil, err
	}
	b := &backend{store: store, keys: opts.Keys, cooling: map[string]time.Time{}, forced: map[string]time.Time{}}
	if ro != nil {
		b.redisKey = rkey
	}
	b.refresher, err = sessions.NewRefresher(b.store, sessions.RefresherOptions{Logger: opts.Logger})
	if err != nil {
		_ = b.Destruct()
		return nil, err
	}
	return b, nil
}

// openStore opens an instrumented store in memory, or on the pooled Redis ro (pool key rkey);
// closing a Redis store does not release the pool: the caller deletes rkey from redisPools.
func openStore(ro *sessions.RedisOptions, rkey string, opts sessions.Options, logger *zap.Logger) (sessions.LockingStore, error) {
	if ro == nil {
		m, err := sessions.NewMemoryStore(opts)
		if err != nil {
			return nil, fmt.Errorf("session store: %w", err)
		}
		return instrumented{m}, nil
	}
	redisLoggerOnce.Do(func() { redis.SetLogger(redisLogger{logger.Named("redis")}) })
	v, _, err := redisPools.LoadOrNew(rkey, func() (caddy.Destructor, error) {
		r, err := sessions.OpenRedis(*ro)
		if err != nil {
			return nil, fmt.Errorf("session store: %w", err)
		}
		return pooledRedis{r}, nil
	})
	if err != nil {
		return nil, err
	}
	rs, err := v.(pooledRedis).Store(opts)
	if err != nil {
		_, _ = redisPools.Delete(rkey)
		return nil, fmt.Errorf("session store: %w", err)
	}
	return instrumented{rs}, nil
}

// keyRing parses the configured sealing keys; ids fingerprint them for pool keys. No keys give
// a nil ring (the memory store makes one up).
func keyRing(keys []string) (kr *sessions.KeyRing, ids []string, err error) {
	if len(keys) == 0 {
		return nil, nil, nil
	}
	raw := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := resolvePlaceholders(fmt.Sprintf("key %d", i+1), k)
		if err != nil {
			return nil, nil, err
		}
		if raw[i], err = sessions.ParseKey(v); err != nil {
			return nil, nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		sum := sha256.Sum256(raw[i])
		ids = append(ids, hex.EncodeToString(sum[:]))
	}
	if kr, err = sessions.NewKeyRing(raw...); err != nil {
		return nil, nil, fmt.Errorf("keys: %w", err)
	}
	return kr, ids, nil
}

// redisOptions resolves the Redis config's placeholders into the store's options.
func redisOptions(c *Redis) (*sessions.RedisOptions, error) {
	ro := &sessions.RedisOptions{
		MasterName: c.MasterName, SentinelAddrs: c.Sentinels, ClusterAddrs: c.Cluster,
		DB: c.DB, KeyPrefix: c.KeyPrefix, OpTimeout: time.Duration(c.Timeout),
		DisableIdentity: c.DisableIdentity,
	}
	var err error
	if ro.URL, err = resolvePlaceholders("redis url", c.URL); err != nil {
		return nil, err
	}
	if ro.Username, err = resolvePlaceholders("redis username", c.Username); err != nil {
		return nil, err
	}
	if ro.Password, err = resolvePlaceholders("redis password", c.Password); err != nil {
		return nil, err
	}
	if c.TLS {
		ro.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return ro, nil
}

// redisFingerprint is the pool key of a Redis deployment's options.
func redisFingerprint(ro *sessions.RedisOptions) (string, error) {
	plain := *ro
	plain.TLS = nil // a tls.Config has no JSON form; TLS is on or off
	return hashJSON("redis", plain, ro.TLS != nil)
}

// hashJSON fingerprints values for a pool key; secrets enter only through the hash.
func hashJSON(v ...any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("fingerprinting the configuration: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// validateSessions checks the session options that need no I/O.
func (h *Handler) validateSessions() error {
	if h.Identity == nil {
		if h.Session != nil {
			return errors.New("session needs an identity to sign users in")
		}
		return nil
	}
	if h.Anonymous {
		return errors.New("anonymous takes no identity or session")
	}
	id := h.Identity
	switch id.Dialect {
	case "fabric_v1":
		if h.SiteContext == nil || h.SiteContext.Account == "" {
			return errors.New("identity fabric_v1 needs site_context account: fabric v1 calls name the merchant account")
		}
	case "ece", "oauth2":
	default:
		return fmt.Errorf("identity: unknown dialect %q (want fabric_v1, ece or oauth2)", id.Dialect)
	}
	if id.Username != "" || id.Password != "" {
		return errors.New("identity username and password are for sitegate_service; users sign in themselves")
	}
	oauthOnly := id.ClientID != "" || id.ClientSecret != "" || len(id.Scopes) > 0 || id.AuthorizeURL != "" ||
		id.TokenURL != "" || id.RevokeURL != "" || id.RedirectURI != ""
	switch {
	case id.Dialect == "oauth2" && id.ClientID == "":
		return errors.New("identity oauth2 needs the user app's client_id")
	case id.Dialect != "oauth2" && oauthOnly:
		return fmt.Errorf("identity %s takes no OAuth2 options (client_id, client_secret, scope, *_url, redirect_uri)", id.Dialect)
	case id.Dialect != "oauth2" && h.Session != nil && h.Session.LoginRedirect:
		return errors.New("session login_redirect needs identity oauth2: other dialects have no browser sign-in page")
	}
	if id.URL == "" {
		return errors.New("identity needs a URL")
	}
	if id.MaxConcurrent < 0 {
		return errors.New("identity max_concurrent must be positive")
	}
	c := h.Session
	if c == nil {
		return nil
	}
	if c.Redis != nil && len(c.Keys) == 0 {
		return errors.New("session store redis needs at least one key: tokens are sealed before they are stored")
	}
	if c.Cookie != "" && !validCookieName(c.Cookie) {
		return fmt.Errorf("session cookie: %q is not a valid cookie name", c.Cookie)
	}
	if p := c.Endpoints; p != "" && (!strings.HasPrefix(p, "/") || p == "/" || strings.ContainsAny(p, "?#*{} ")) {
		return fmt.Errorf("session endpoints: %q is not a path prefix such as /.sitegate", p)
	}
	for _, o := range c.AllowOrigins {
		if !strings.HasPrefix(o, "https://") && !strings.HasPrefix(o, "http://") || strings.Count(o, "/") != 2 {
			return fmt.Errorf("session allow_origin: %q is not an origin such as https://app.acme.example", o)
		}
	}
	if c.IdleTimeout < 0 || c.Lifetime < 0 || c.RefreshBefore < 0 {
		return errors.New("session durations must be positive")
	}
	return nil
}

// validCookieName reports whether s is an RFC 6265 cookie-name (a token).
func validCookieName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// cleanupSessions releases the pooled backend.
func (h *Handler) cleanupSessions() error {
	if h.gate == nil || h.gate.backendKey == "" {
		return nil
	}
	_, err := backends.Delete(h.gate.backendKey)
	return err
}
