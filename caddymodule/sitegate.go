package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/sitegate/sitegate/sitecontext"
	"github.com/sitegate/sitegate/tokens"
)

func init() { caddy.RegisterModule(Handler{}) }

// Handler is sitegate's gateway: it authenticates each request and forwards it to the next
// handler (usually reverse_proxy) with x-site-context and identity headers that only sitegate
// can set.
//
// For every request, first, it removes the headers it owns (x-site-context,
// x-fabric-tenant-id, x-fabric-channel-id and each identity header), in any case, with "_" for
// "-", and from Connection, and its session cookie from Cookie. Then it authenticates the
// request. With identity set, a session cookie or an "Authorization: Session <handle>" names a
// server-side session, whose access token is refreshed before it expires (once across every
// instance sharing the store) and forwarded as "Authorization: Bearer"; the endpoints under
// session.endpoints (default /.sitegate) sign users in and out. Otherwise it validates the
// bearer token: locally against JWKS, OIDC discovery or static keys when the token's iss is the
// configured issuer, otherwise by introspection. Then it builds x-site-context and sets the
// identity placeholders {http.auth.user.id}, {http.auth.user.account} and
// {http.auth.user.<claim>} and the identity headers.
//
// Errors are fabric APIErrors: 401 MISSING_CREDENTIALS, INVALID_TOKEN, TOKEN_EXPIRED,
// SESSION_EXPIRED or LOGIN_FAILED with a WWW-Authenticate challenge; 400 INVALID_REQUEST or
// INVALID_SITE_CONTEXT; 403 ACCOUNT_MISMATCH or CROSS_SITE_REQUEST; 503 IDENTITY_UNAVAILABLE
// (keys not loaded yet, introspection or refresh unreachable) or SESSION_STORE_UNAVAILABLE,
// with Retry-After.
type Handler struct {
	// Anonymous serves public routes: headers are stripped, nothing is authenticated, no
	// identity is set. No other option applies.
	Anonymous bool `json:"anonymous,omitempty"`

	// Issuer is the exact iss of tokens verified locally. Required with jwks_urls, discovery or
	// public_key_files.
	Issuer string `json:"issuer,omitempty"`
	// Audiences: a token's aud must hold one of them. At least one is required for local
	// verification (an empty list would disable the check).
	Audiences []string `json:"audiences,omitempty"`
	// Algorithms accepted. Default: RS256, ES256, PS256, EdDSA. none and HS* are refused.
	Algorithms []string `json:"algorithms,omitempty"`
	// Leeway for exp, nbf and iat. Default: 30s; at most 60s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// JWKSURLs are fetched in the background and refreshed every jwks_refresh.
	JWKSURLs []string `json:"jwks_urls,omitempty"`
	// Discovery is an issuer URL whose /.well-known/openid-configuration names the JWKS.
	Discovery string `json:"discovery,omitempty"`
	// PublicKeyFiles are PEM files of static public keys (RSA, ECDSA, Ed25519).
	PublicKeyFiles []string `json:"public_key_files,omitempty"`
	// JWKSRefresh is the JWKS refresh interval. Default: 15m. A token naming an unknown kid
	// triggers at most one refetch a minute.
	JWKSRefresh caddy.Duration `json:"jwks_refresh,omitempty"`

	// Introspection checks tokens that cannot be verified locally (fabric publishes no keys for
	// v1 tokens) by calling an identity endpoint with the token.
	Introspection *Introspection `json:"introspection,omitempty"`

	// SiteContext says how x-site-context is built.
	SiteContext *SiteContext `json:"site_context,omitempty"`

	// IdentityHeaders are request headers set after authentication, name to value; values may
	// use placeholders such as {http.auth.user.id}. Control characters in the result are
	// escaped. Clients cannot send these headers: they are always stripped.
	IdentityHeaders map[string]string `json:"identity_headers,omitempty"`

	// Identity is the identity service users sign in to at <endpoints>/login. Setting it turns
	// on sessions: the session cookie or an "Authorization: Session <handle>" header
	// authenticates a request, and sitegate forwards it with the session's access token,
	// refreshed before it expires.
	Identity *Identity `json:"identity,omitempty"`
	// Session configures sessions. Default: in memory, 30m idle timeout, 12h lifetime.
	Session *Sessions `json:"session,omitempty"`

	// UseHandleErrors returns errors to Caddy instead of writing the APIError body, so that
	// handle_errors routes render them; {http.sitegate.error.code} and
	// {http.sitegate.error.message} are set.
	UseHandleErrors bool `json:"use_handle_errors,omitempty"`

	validator *tokens.Validator
	poolKey   string
	gate      *sessionGate
	cookie    string // the session cookie's name, removed from every request
	sites     *sitecontext.Builder
	v3Headers bool
	owned     ownedHeaders
	logger    *zap.Logger
}

// Introspection configures token introspection.
type Introspection struct {
	// URL is called with GET and "Authorization: Bearer <token>": 200 means valid, 401 and 403
	// invalid, anything else unavailable. Required.
	URL string `json:"url"`
	// Headers are sent with each call, e.g. x-api-key. Placeholders such as {env.API_KEY} are
	// resolved when the config loads.
	Headers map[string]string `json:"headers,omitempty"`
	// MaxTTL caps how long a valid answer is cached; never past the token's exp. Default: 5m.
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`
	// FailureTTL is how long an invalid answer is cached. Default: 10s.
	FailureTTL caddy.Duration `json:"failure_ttl,omitempty"`
	// MaxConcurrent caps concurrent calls; beyond it requests get 503. Default: 32.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
}

// SiteContext configures x-site-context.
type SiteContext struct {
	// Account is the merchant account for identities that name none; when set it also pins the
	// gateway to that account (403 ACCOUNT_MISMATCH for identities of other accounts).
	Account string `json:"account,omitempty"`
	// AccountClaim names the claim holding the identity's accounts. Default: the v1 accountid
	// claim, then the OAuth2 accounts claim.
	AccountClaim string `json:"account_claim,omitempty"`
	// Channel is the sales channel, e.g. 12. Default: none.
	Channel int `json:"channel,omitempty"`
	// Stage is the environment name, e.g. production. Default: none.
	Stage string `json:"stage,omitempty"`
	// Date adds the request time as date.
	Date bool `json:"date,omitempty"`
	// AllowClient lists the fields (channel, stage, date) a client's own x-site-context may set.
	AllowClient []string `json:"allow_client,omitempty"`
	// FabricV3Headers also sets x-fabric-tenant-id (the account) and x-fabric-channel-id.
	FabricV3Headers bool `json:"fabric_v3_headers,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.sitegate", New: func() caddy.Module { return new(Handler) }}
}

// validators shares token validators, with their key sets and caches, across handlers and config
// reloads: a reload keeps the keys it has instead of answering 503 until they load again.
var validators = caddy.NewUsagePool()

type pooledValidator struct{ *tokens.Validator }

func (p pooledValidator) Destruct() error { p.Close(); return nil }

// Provision sets up the handler. It does no network I/O: keys load in the background.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	sc := h.SiteContext
	if sc == nil {
		sc = &SiteContext{}
	}
	identityHeaders := make([]string, 0, len(h.IdentityHeaders))
	for name := range h.IdentityHeaders {
		identityHeaders = append(identityHeaders, name)
	}
	h.owned = append(ownedHeaders{sitecontext.Header, sitecontext.TenantHeader, sitecontext.ChannelHeader}, identityHeaders...)
	h.v3Headers = sc.FabricV3Headers
	h.cookie = defaultCookie
	if h.Session != nil && h.Session.Cookie != "" {
		h.cookie = h.Session.Cookie
	}
	if h.Anonymous {
		return nil
	}
	var err error
	h.sites, err = sitecontext.New(sitecontext.Config{
		Account: sc.Account, AccountClaim: sc.AccountClaim, Channel: sc.Channel,
		Stage: sc.Stage, Date: sc.Date, AllowClient: sc.AllowClient,
	})
	if err != nil {
		return fmt.Errorf("site_context: %w", err)
	}
	if h.Identity != nil {
		if err := h.provisionSessions(); err != nil {
			return err
		}
		if !h.bearerConfigured() {
			return nil // sessions only: bearer tokens are refused
		}
	}
	cfg, err := h.tokensConfig()
	if err != nil {
		return err
	}
	h.poolKey, err = fingerprint(cfg)
	if err != nil {
		return err
	}
	v, _, err := validators.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		cfg.Logger = h.logger.Named("tokens")
		cfg.Observer = observer{}
		v, err := tokens.New(cfg)
		if err != nil {
			return nil, err
		}
		v.Start()
		return pooledValidator{v}, nil
	})
	if err != nil {
		h.poolKey = ""
		return err
	}
	h.validator = v.(pooledValidator).Validator
	return nil
}

// bearerConfigured reports whether any bearer token source is configured.
func (h *Handler) bearerConfigured() bool {
	return h.Issuer != "" || len(h.JWKSURLs) > 0 || h.Discovery != "" || len(h.PublicKeyFiles) > 0 || h.Introspection != nil
}

// tokensConfig turns the JSON config into the validator's, resolving placeholders and reading
// key files.
func (h *Handler) tokensConfig() (tokens.Config, error) {
	cfg := tokens.Config{
		Algorithms:      h.Algorithms,
		Audiences:       h.Audiences,
		Leeway:          time.Duration(h.Leeway),
		RefreshInterval: time.Duration(h.JWKSRefresh),
	}
	var err error
	if cfg.Issuer, err = resolvePlaceholders("issuer", h.Issuer); err != nil {
		return cfg, err
	}
	if cfg.DiscoveryURL, err = resolvePlaceholders("discovery", h.Discovery); err != nil {
		return cfg, err
	}
	for _, u := range h.JWKSURLs {
		r, err := resolvePlaceholders("jwks", u)
		if err != nil {
			return cfg, err
		}
		cfg.JWKSURLs = append(cfg.JWKSURLs, r)
	}
	for _, f := range h.PublicKeyFiles {
		pem, err := os.ReadFile(f)
		if err != nil {
			return cfg, fmt.Errorf("public_key: %w", err)
		}
		k, err := tokens.ParsePublicKeyPEM(pem)
		if err != nil {
			return cfg, fmt.Errorf("public_key %s: %w", f, err)
		}
		cfg.PublicKeys = append(cfg.PublicKeys, k)
	}
	if in := h.Introspection; in != nil {
		ti := &tokens.Introspection{
			Header:        http.Header{},
			MaxTTL:        time.Duration(in.MaxTTL),
			FailureTTL:    time.Duration(in.FailureTTL),
			MaxConcurrent: in.MaxConcurrent,
		}
		if ti.URL, err = resolvePlaceholders("introspect", in.URL); err != nil {
			return cfg, err
		}
		for name, value := range in.Headers {
			v, err := resolvePlaceholders("introspect header "+name, value)
			if err != nil {
				return cfg, err
			}
			ti.Header.Set(name, v)
		}
		cfg.Introspection = ti
	}
	return cfg, nil
}

// resolvePlaceholders resolves config-time placeholders ({env.*}, {file.*}) in a value that
// names what for errors. An unknown placeholder, or one that resolves to nothing, is an error:
// an unset variable must not become an empty secret.
func resolvePlaceholders(what, s string) (string, error) {
	v, err := caddy.NewReplacer().ReplaceOrErr(s, true, true)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

// fingerprint identifies a validator configuration for the pool. Static keys count by their
// value; secrets (introspection headers) only through the hash.
func fingerprint(cfg tokens.Config) (string, error) {
	keys := make([]string, len(cfg.PublicKeys))
	for i, k := range cfg.PublicKeys {
		keys[i] = fmt.Sprintf("%T%v", k, k)
	}
	return hashJSON(cfg.Issuer, cfg.Audiences, cfg.Algorithms, cfg.Leeway, cfg.RefreshInterval,
		cfg.JWKSURLs, cfg.DiscoveryURL, keys, cfg.Introspection)
}

// Validate checks what Provision could not: header names and option combinations.
func (h *Handler) Validate() error {
	for name := range h.IdentityHeaders {
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("identity_header: %q is not a valid header name", name)
		}
		if (ownedHeaders{sitecontext.Header, sitecontext.TenantHeader, sitecontext.ChannelHeader}).owns(name) {
			return fmt.Errorf("identity_header: %s is set by site_context", name)
		}
	}
	if h.Anonymous {
		if h.bearerConfigured() || len(h.IdentityHeaders) > 0 {
			return errors.New("anonymous takes no token, introspection or identity options")
		}
	}
	return h.validateSessions()
}

// Cleanup releases the pooled validator and session store.
func (h *Handler) Cleanup() error {
	err := h.cleanupSessions()
	if h.poolKey != "" {
		_, verr := validators.Delete(h.poolKey)
		err = errors.Join(err, verr)
	}
	return err
}

var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
