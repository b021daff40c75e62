package caddymodule

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
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
}

// registerMetrics registers the collectors into reg. reg may be nil (Caddy 2.11 can lose the
// registry in derived contexts); the collectors still count.
func registerMetrics(reg prometheus.Registerer) error {
	metricsOnce.Do(newMetrics)
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metricRequests, metricValidations, metricJWKSFetches, metricUnknownKID, metricIntrospection} {
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

var requests, validations = new(counters), new(counters)

// observer feeds the token validator's events into the collectors.
type observer struct{}

func (observer) JWKSFetch(result string) { metricJWKSFetches.WithLabelValues(result).Inc() }
func (observer) UnknownKID(refetched bool) {
	metricUnknownKID.WithLabelValues(strconv.FormatBool(refetched)).Inc()
}
func (observer) Introspection(result string) { metricIntrospection.WithLabelValues(result).Inc() }
func (observer) Validation(result string)    { validations.inc(result) }
