package caddymodule

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sitegate/sitegate/sessions"
)

// Collectors are created once per process and registered into the registry of every config
// load (Caddy gives each load a new one), so counts survive reloads. Labels are bounded sets:
// never a user, a session, a path, a host or an address.
var (
	metricsOnce sync.Once

	// sitegate_requests_total{outcome}: what the gateway did with each request.
	metricRequests *prometheus.CounterVec
	// sitegate_token_validations_total{result}: ok, cache_hit, expired, invalid, not_ready, unavailable.
	metricValidations *prometheus.CounterVec
	// sitegate_jwks_fetches_total{result}: fetches of JWKS and discovery documents, ok or error.
	metricJWKSFetches *prometheus.CounterVec
	// sitegate_jwks_unknown_kid_total{refetched}: tokens naming a kid not in the key set.
	metricUnknownKID *prometheus.CounterVec
	// sitegate_introspection_total{result}: valid, invalid, unavailable, cache_hit.
	metricIntrospection *prometheus.CounterVec

	// sitegate_session_refreshes_total{dialect,result}: ok, coalesced, rejected, unavailable.
	metricRefreshes *prometheus.CounterVec
	// sitegate_session_refresh_duration_seconds{dialect}: identity refresh calls.
	metricRefreshSeconds *prometheus.HistogramVec
	// sitegate_session_refresh_lock_wait_seconds: from asking for a refresh until this
	// instance holds the lock, or until a peer's result arrives.
	metricLockWait prometheus.Histogram
	// sitegate_session_store_duration_seconds{op} and sitegate_session_store_errors_total{op}:
	// session store operations (create, load, save, touch, delete, ping, lock) and failures to
	// reach the store.
	metricStoreSeconds *prometheus.HistogramVec
	metricStoreErrors  *prometheus.CounterVec
	// sitegate_sessions_created_total{dialect}, sitegate_sessions_deleted_total{reason}: logout,
	// rejected (Identity refused a refresh), replaced (a new sign-in with the old cookie).
	metricSessionsCreated *prometheus.CounterVec
	metricSessionsDeleted *prometheus.CounterVec
	// sitegate_upstream_401_replays_total: session requests replayed with a refreshed token
	// after the upstream answered 401.
	metricReplays prometheus.Counter

	// sitegate_service_requests_total{outcome}: what the sidecar did with each request (ok,
	// passthrough, identity_unavailable, invalid_site_context, client_gone).
	metricServiceRequests *prometheus.CounterVec
	// sitegate_service_token_fetches_total{dialect,result}: the sidecar's calls to Identity for
	// a token: ok, rejected, unavailable.
	metricServiceFetches *prometheus.CounterVec
	// sitegate_service_token_age_at_refresh_seconds: how old a service token was when a fetch
	// replaced it.
	metricServiceTokenAge prometheus.Histogram
	// sitegate_service_401_replays_total: sidecar requests replayed with a fresh token after the
	// upstream answered 401.
	metricServiceReplays prometheus.Counter
)

func newMetrics() {
	counter := func(name, help string, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sitegate", Name: name, Help: help}, []string{label})
	}
	metricRequests = counter("requests_total", "Requests handled by the sitegate gateway, by outcome.", "outcome")
	metricValidations = counter("token_validations_total", "Bearer token validations, by result.", "result")
	metricJWKSFetches = counter("jwks_fetches_total", "Fetches of JWKS and OIDC discovery documents, by result.", "result")
	metricUnknownKID = counter("jwks_unknown_kid_total", "Tokens naming a key id missing from the key set, by whether a refetch was made.", "refetched")
	metricIntrospection = counter("introspection_total", "Token introspection calls and cache hits, by result.", "result")
	requests.vec, validations.vec = metricRequests, metricValidations

	metricRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sitegate", Name: "session_refreshes_total",
		Help: "Session token refreshes, by dialect and result."}, []string{"dialect", "result"})
	metricRefreshSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sitegate", Name: "session_refresh_duration_seconds",
		Help: "Duration of identity refresh calls, by dialect.", Buckets: prometheus.DefBuckets}, []string{"dialect"})
	metricLockWait = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "sitegate", Name: "session_refresh_lock_wait_seconds",
		Help: "Time a refresh waited for the session's lock or for a peer's result.", Buckets: prometheus.DefBuckets})
	metricStoreSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sitegate", Name: "session_store_duration_seconds",
		Help:    "Duration of session store operations, by operation.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"op"})
	metricStoreErrors = counter("session_store_errors_total", "Session store operations that could not reach the store, by operation.", "op")
	metricSessionsCreated = counter("sessions_created_total", "Sessions created by sign-in, by dialect.", "dialect")
	metricSessionsDeleted = counter("sessions_deleted_total", "Sessions deleted by sitegate, by reason (logout, rejected, replaced).", "reason")
	metricReplays = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sitegate", Name: "upstream_401_replays_total",
		Help: "Session requests replayed with a refreshed token after the upstream answered 401."})
	metricServiceRequests = counter("service_requests_total", "Requests handled by the sitegate sidecar, by outcome.", "outcome")
	serviceRequests.vec = metricServiceRequests
	metricServiceFetches = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sitegate", Name: "service_token_fetches_total",
		Help: "Service token fetches from Identity, by dialect and result."}, []string{"dialect", "result"})
	metricServiceTokenAge = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "sitegate", Name: "service_token_age_at_refresh_seconds",
		Help:    "Age of a service token when a fetch replaced it.",
		Buckets: []float64{1, 10, 60, 120, 300, 540, 600, 900, 1800, 3600, 7200}})
	metricServiceReplays = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sitegate", Name: "service_401_replays_total",
		Help: "Sidecar requests replayed with a fresh token after the upstream answered 401."})
	for _, op := range []string{"create", "load", "save", "touch", "delete", "ping", "lock"} {
		storeOps[op] = storeOp{metricStoreSeconds.WithLabelValues(op), metricStoreErrors.WithLabelValues(op)}
	}
}

// registerMetrics registers the collectors into reg. reg may be nil (Caddy 2.11 can lose the
// registry in derived contexts); the collectors still count.
func registerMetrics(reg prometheus.Registerer) error {
	metricsOnce.Do(newMetrics)
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metricRequests, metricValidations, metricJWKSFetches, metricUnknownKID, metricIntrospection,
		metricRefreshes, metricRefreshSeconds, metricLockWait, metricStoreSeconds, metricStoreErrors, metricSessionsCreated, metricSessionsDeleted, metricReplays,
		metricServiceRequests, metricServiceFetches, metricServiceTokenAge, metricServiceReplays} {
		var dup prometheus.AlreadyRegisteredError
		if err := reg.Register(c); err != nil && !errors.As(err, &dup) {
			return err
		}
	}
	return nil
}

// counters resolves a vector's counters once per label value: WithLabelValues hashes its labels
// on every call, which the request path should not pay.
type counters struct {
	vec *prometheus.CounterVec
	m   sync.Map // label → prometheus.Counter
}

func (c *counters) inc(label string) {
	ctr, ok := c.m.Load(label)
	if !ok {
		ctr, _ = c.m.LoadOrStore(label, c.vec.WithLabelValues(label))
	}
	ctr.(prometheus.Counter).Inc()
}

var requests, validations, serviceRequests = new(counters), new(counters), new(counters)

// observer feeds the token validator's events into the collectors.
type observer struct{}

func (observer) JWKSFetch(result string) { metricJWKSFetches.WithLabelValues(result).Inc() }
func (observer) UnknownKID(refetched bool) {
	metricUnknownKID.WithLabelValues(strconv.FormatBool(refetched)).Inc()
}
func (observer) Introspection(result string) { metricIntrospection.WithLabelValues(result).Inc() }
func (observer) Validation(result string)    { validations.inc(result) }

// storeOp holds the collectors of one store operation.
type storeOp struct {
	seconds prometheus.Observer
	errors  prometheus.Counter
}

var storeOps = map[string]storeOp{} // written once by newMetrics

// observe records one operation that started at start; only failures to reach the store count
// as errors (not found, conflicts and a held lock are answers).
func (o storeOp) observe(start time.Time, err error) {
	o.seconds.Observe(time.Since(start).Seconds())
	if errors.Is(err, sessions.ErrUnavailable) {
		o.errors.Inc()
	}
}

// instrumented is a session store that feeds the store metrics.
type instrumented struct{ sessions.LockingStore }

func (s instrumented) Create(ctx context.Context, sess *sessions.Session) error {
	start := time.Now()
	err := s.LockingStore.Create(ctx, sess)
	storeOps["create"].observe(start, err)
	return err
}

func (s instrumented) Load(ctx context.Context, id string) (*sessions.Session, error) {
	start := time.Now()
	sess, err := s.LockingStore.Load(ctx, id)
	storeOps["load"].observe(start, err)
	return sess, err
}

func (s instrumented) Save(ctx context.Context, sess *sessions.Session, expect uint64) error {
	start := time.Now()
	err := s.LockingStore.Save(ctx, sess, expect)
	storeOps["save"].observe(start, err)
	return err
}

func (s instrumented) Touch(ctx context.Context, id string, lastSeen time.Time) error {
	start := time.Now()
	err := s.LockingStore.Touch(ctx, id, lastSeen)
	storeOps["touch"].observe(start, err)
	return err
}

func (s instrumented) Delete(ctx context.Context, id string) error {
	start := time.Now()
	err := s.LockingStore.Delete(ctx, id)
	storeOps["delete"].observe(start, err)
	return err
}

func (s instrumented) Ping(ctx context.Context) error {
	start := time.Now()
	err := s.LockingStore.Ping(ctx)
	storeOps["ping"].observe(start, err)
	return err
}

func (s instrumented) TryLock(ctx context.Context, id string, ttl time.Duration) (sessions.Lease, error) {
	start := time.Now()
	l, err := s.LockingStore.TryLock(ctx, id, ttl)
	storeOps["lock"].observe(start, err)
	return l, err
}
