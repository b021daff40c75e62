package caddymodule

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sitegate/sitegate/service"
	"github.com/sitegate/sitegate/sessions"
	"github.com/sitegate/sitegate/sitecontext"
	"github.com/sitegate/sitegate/upstream"
)

func init() { caddy.RegisterModule(Service{}) }

// Service is the sidecar, http.handlers.sitegate_service: an application sends its outbound
// calls to it in plain, and it forwards them with a service identity's bearer token and the
// configured x-site-context. The token is fetched and refreshed in the background; with a Redis
// store every replica shares one token, fetched once per lifetime for the whole fleet.
type Service struct {
	// Identity is where the service token comes from: oauth2 with a system app's client_id and
	// client_secret (client_credentials), or fabric_v1 or ece with a service user's username
	// and password. Required.
	Identity *Identity `json:"identity"`
	// Redis shares the token across replicas. Default: this process's memory.
	Redis *Redis `json:"redis,omitempty"`
	// Keys seal the token in Redis, as session keys do (required with Redis).
	Keys []string `json:"keys,omitempty"`
	// RefreshBefore refreshes the token when it expires within max(RefreshBefore, a tenth of
	// its lifetime). Default: 60s.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`
	// SiteContext builds the x-site-context sent upstream (account, channel, stage, date,
	// allow_client, fabric_v3_headers); account_claim does not apply.
	SiteContext *SiteContext `json:"site_context,omitempty"`
	// KeepAuthorization forwards a request that carries its own Authorization header as it is,
	// without the service token. Default: the application's Authorization is removed.
	KeepAuthorization bool `json:"keep_authorization,omitempty"`

	logger    *zap.Logger
	owned     ownedHeaders
	sites     *sitecontext.Builder
	static    *sitecontext.Result // the site context when it does not vary by request
	v3Headers bool
	hold401   caddyhttp.ShouldBufferFunc
	source    *service.Source
	poolKey   string
	bearer    *atomic.Pointer[bearerHeader] // a pointer: the module value is copied by CaddyModule
}

// bearerHeader is the Authorization value of one token, built once per token.
type bearerHeader struct {
	token string
	value []string
}

// CaddyModule returns the Caddy module information.
func (Service) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.sitegate_service", New: func() caddy.Module { return new(Service) }}
}

// services shares token sources across handlers and config reloads: a reload keeps the token.
var services = caddy.NewUsagePool()

// pooledSource is a token source with its store.
type pooledSource struct {
	*service.Source
	store    sessions.LockingStore
	redisKey string
}

func (p pooledSource) Destruct() error {
	p.Close()
	err := p.store.Close()
	if p.redisKey != "" {
		_, derr := redisPools.Delete(p.redisKey)
		err = errors.Join(err, derr)
	}
	return err
}

// The service token's record: it lives as long as a replica refreshes it, and a day more.
const (
	serviceIdle     = 24 * time.Hour
	serviceLifetime = 100 * 365 * 24 * time.Hour
)

// Provision sets up the sidecar and starts fetching the token in the background.
func (s *Service) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	s.bearer = new(atomic.Pointer[bearerHeader])
	s.hold401 = func(status int, _ http.Header) bool { return status == http.StatusUnauthorized }
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	sc := cmp.Or(s.SiteContext, &SiteContext{})
	s.owned = ownedHeaders{sitecontext.Header, sitecontext.TenantHeader, sitecontext.ChannelHeader}
	s.v3Headers = sc.FabricV3Headers
	var err error
	s.sites, err = sitecontext.New(sitecontext.Config{
		Account: sc.Account, Channel: sc.Channel, Stage: sc.Stage, Date: sc.Date, AllowClient: sc.AllowClient,
	})
	if err != nil {
		return fmt.Errorf("site_context: %w", err)
	}
	site, err := s.sites.Build(nil, nil)
	if err != nil {
		return fmt.Errorf("site_context: %w", err)
	}
	if !sc.Date {
		s.static = &site
	}

	id := s.Identity
	idp, err := id.client(site.Value)
	if err != nil {
		return err
	}
	fetch, err := serviceFetch(id, idp)
	if err != nil {
		return err
	}
	kr, keyIDs, err := keyRing(s.Keys)
	if err != nil {
		return err
	}
	var ro *sessions.RedisOptions
	var redisKey string
	if s.Redis != nil {
		if ro, err = redisOptions(s.Redis); err != nil {
			return err
		}
		if redisKey, err = redisFingerprint(ro); err != nil {
			return err
		}
	}
	// The record is named by who the token is for, never by a secret; the pool key also
	// covers the secrets (hashed), so that a changed secret fetches anew.
	recordID, err := hashJSON("service", id.Dialect, id.URL, id.ClientID, id.Scopes, id.Username, id.TokenURL)
	if err != nil {
		return err
	}
	s.poolKey, err = hashJSON("service source", recordID, *id, redisKey, keyIDs, s.RefreshBefore)
	if err != nil {
		return err
	}
	v, _, err := services.LoadOrNew(s.poolKey, func() (caddy.Destructor, error) {
		logger := s.logger.Named("service")
		store, err := openStore(ro, redisKey, sessions.Options{
			IdleTimeout: serviceIdle, Lifetime: serviceLifetime, Keys: kr, Logger: logger,
		}, logger)
		if err != nil {
			return nil, err
		}
		src, err := service.New(service.Options{
			Store: store, ID: "service:" + recordID, Fetch: fetch, Dialect: id.Dialect,
			RefreshBefore: time.Duration(s.RefreshBefore), Observer: serviceObserver{id.Dialect}, Logger: logger,
		})
		if err != nil {
			_ = store.Close()
			if ro != nil {
				_, _ = redisPools.Delete(redisKey)
			}
			return nil, err
		}
		src.Start()
		p := pooledSource{Source: src, store: store}
		if ro != nil {
			p.redisKey = redisKey
		}
		return p, nil
	})
	if err != nil {
		s.poolKey = ""
		return err
	}
	s.source = v.(pooledSource).Source
	return nil
}

// serviceFetch is how the dialect gets the service a token: client_credentials (oauth2), or
// the service user's refresh, falling back to a login when Identity refuses the refresh.
func serviceFetch(id *Identity, idp identityClient) (service.FetchFunc, error) {
	if oc, ok := idp.(*upstream.OAuth2); ok {
		scopes := id.Scopes
		return func(ctx context.Context, _ *upstream.Tokens) (*upstream.Tokens, error) {
			return oc.ClientCredentials(ctx, scopes)
		}, nil
	}
	pc := idp.(passwordClient)
	username, err := resolvePlaceholders("username", id.Username)
	if err != nil {
		return nil, err
	}
	password, err := resolvePlaceholders("password", id.Password)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, prev *upstream.Tokens) (*upstream.Tokens, error) {
		if prev != nil && prev.AccessToken != "" {
			t, err := pc.Refresh(ctx, prev)
			if !errors.Is(err, upstream.ErrRejected) {
				return t, err
			}
		}
		return pc.Login(ctx, username, password)
	}, nil
}

// Validate checks the identity options that suit a sidecar.
func (s *Service) Validate() error {
	id := s.Identity
	if id == nil {
		return errors.New("sitegate_service needs an identity")
	}
	if !slices.Contains(dialects, id.Dialect) {
		return fmt.Errorf("identity: unknown dialect %q (want fabric_v1, ece or oauth2)", id.Dialect)
	}
	if id.URL == "" {
		return errors.New("identity needs a URL")
	}
	if id.AuthorizeURL != "" || id.RevokeURL != "" || id.RedirectURI != "" {
		return errors.New("identity: authorize_url, revoke_url and redirect_uri are for user sign-in, not for sitegate_service")
	}
	if id.Dialect == "oauth2" {
		if id.ClientID == "" || id.ClientSecret == "" {
			return errors.New("identity oauth2 needs client_id and client_secret: sitegate_service uses the client_credentials grant")
		}
		if id.Username != "" || id.Password != "" {
			return errors.New("identity oauth2 takes no username or password")
		}
	} else {
		if id.Username == "" || id.Password == "" {
			return fmt.Errorf("identity %s needs the service user's username and password", id.Dialect)
		}
		if id.ClientID != "" || id.ClientSecret != "" || len(id.Scopes) > 0 || id.TokenURL != "" {
			return fmt.Errorf("identity %s takes no client_id, client_secret, scope or token_url", id.Dialect)
		}
	}
	if id.Dialect == "fabric_v1" && (s.SiteContext == nil || s.SiteContext.Account == "") {
		return errors.New("identity fabric_v1 needs site_context account: fabric v1 calls name the merchant account")
	}
	if s.SiteContext != nil && s.SiteContext.AccountClaim != "" {
		return errors.New("site_context account_claim does not apply to sitegate_service: set account")
	}
	if s.Redis != nil && len(s.Keys) == 0 {
		return errors.New("store redis needs at least one key: the token is sealed before it is stored")
	}
	if s.RefreshBefore < 0 {
		return errors.New("refresh_before must be positive")
	}
	return nil
}

// Cleanup releases the pooled token source.
func (s *Service) Cleanup() error {
	if s.poolKey == "" {
		return nil
	}
	_, err := services.Delete(s.poolKey)
	return err
}

// ServeHTTP strips the owned headers, sets the site context and the service token, and calls
// next; an upstream 401 gets one fresh token and a replay when the body was buffered.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	client := r.Header.Values(sitecontext.Header) // read before the strip removes it
	s.owned.strip(r.Header)
	site := s.static
	if site == nil || len(client) > 0 {
		built, err := s.sites.Build(nil, client)
		switch {
		case errors.Is(err, sitecontext.ErrAccountMismatch):
			return s.fail(w, r, siteContextError(http.StatusForbidden, err), 0)
		case err != nil:
			return s.fail(w, r, siteContextError(http.StatusBadRequest, err), 0)
		}
		site = &built
	}
	setSite(r.Header, site, s.v3Headers)
	if _, own := r.Header["Authorization"]; own && s.KeepAuthorization {
		serviceRequests.inc("passthrough")
		return next.ServeHTTP(w, r)
	}
	token, err := s.source.Token(r.Context())
	if err != nil {
		if r.Context().Err() != nil {
			return s.fail(w, r, errClientGone, 0)
		}
		return s.fail(w, r, errNoServiceToken, service.RetryAfter(err))
	}
	r.Header["Authorization"] = s.bearerFor(token)
	body, replayable, err := bufferBody(r)
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	serviceRequests.inc("ok")
	if !replayable {
		return next.ServeHTTP(w, r)
	}

	saved := w.Header().Clone()
	var buf bytes.Buffer
	rec := caddyhttp.NewResponseRecorder(w, &buf, s.hold401)
	err = next.ServeHTTP(rec, r)
	if !rec.Buffered() {
		return err
	}
	// The upstream refused the token: one fresh token (shared with every request and replica
	// that saw the same refusal), then a replay.
	fresh, ierr := s.source.Invalidate(r.Context(), token)
	if ierr != nil || fresh == token {
		return rec.WriteResponse() // nothing new to try: the upstream's 401 stands
	}
	clear(w.Header())
	for k, v := range saved {
		w.Header()[k] = v
	}
	metricServiceReplays.Inc()
	r.Header["Authorization"] = s.bearerFor(fresh)
	r.Body = io.NopCloser(bytes.NewReader(body))
	return next.ServeHTTP(w, r)
}

// bearerFor returns the Authorization header value of token, built once per token.
func (s *Service) bearerFor(token string) []string {
	if b := s.bearer.Load(); b != nil && b.token == token {
		return b.value
	}
	b := &bearerHeader{token: token, value: []string{"Bearer " + token}}
	s.bearer.Store(b)
	return b.value
}

// fail answers e with a Retry-After of retry (rounded up to seconds) on a 503.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, e *apiError, retry time.Duration) error {
	serviceRequests.inc(e.outcome)
	return respond(w, r, e, false, max(int(math.Ceil(retry.Seconds())), 1))
}

// serviceObserver feeds a token source's events into the collectors.
type serviceObserver struct{ dialect string }

func (o serviceObserver) Fetched(result string) {
	metricServiceFetches.WithLabelValues(o.dialect, result).Inc()
}

func (o serviceObserver) Replaced(age time.Duration) { metricServiceTokenAge.Observe(age.Seconds()) }

var (
	_ caddy.Provisioner           = (*Service)(nil)
	_ caddy.Validator             = (*Service)(nil)
	_ caddy.CleanerUpper          = (*Service)(nil)
	_ caddyhttp.MiddlewareHandler = (*Service)(nil)
)
