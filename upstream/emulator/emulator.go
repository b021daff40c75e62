// Package emulator is an in-memory emulator of fabric Identity for development and tests.
//
// One http.Handler serves four personalities, each under its own path prefix:
//
//   - fabric Identity v1 under /api-commerceIdentity (login, refresh, passwords, users, addresses);
//   - User APIs 2.0 under /ums/v2;
//   - the Okta-style OAuth2 authorization servers of fabric Identity v2/v3 under /oauth2/{server};
//   - Elastic Cloud Enterprise style authentication under /api/v1/users/auth.
//
// Every token it issues is an RS256 JWT with a kid published at /oauth2/{server}/v1/keys (OAuth2
// refresh tokens excepted: they are opaque, as Okta's are). The emulator remembers every token it
// issued, so it can reject a refresh token that was rotated away, a revoked token or a token of a
// deactivated user exactly as the real service would.
//
// A control API under /_emulator/ counts calls per endpoint and switches faults on and off (added
// latency, 5xx answers, rejected credentials, dropped connections), see control.go. It is meant for
// tests and demos and must never be exposed beyond the loopback interface.
package emulator

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Config configures an Emulator. The zero value is usable: no users, no clients, default lifetimes.
type Config struct {
	// APIKey, when set, is required in the x-api-key header of the v1 endpoints that the
	// fabric documents protect with an API key.
	APIKey string
	// Users are seeded at start. More can be created through the v1 user endpoints.
	Users []User
	// Clients are the OAuth2 applications (system apps and user apps).
	Clients []Client
	// AccessLifetime is the lifetime of user access tokens (v1, OAuth2 and ECE). Default: 30m.
	AccessLifetime time.Duration
	// RefreshLifetime is the lifetime of refresh tokens (v1 and OAuth2). Default: 45 days.
	RefreshLifetime time.Duration
	// ClientTokenLifetime is the lifetime of client_credentials tokens. Default: 10m.
	ClientTokenLifetime time.Duration
	// KeepRefreshTokens turns refresh-token rotation off: a refresh answers with the refresh token
	// it was given. By default every refresh issues a new refresh token and the old one is rejected
	// from then on.
	KeepRefreshTokens bool
	// Audience is the aud claim of OAuth2 access tokens. Default: api://default.
	Audience string
	// Issuer is the base URL used to build OAuth2 issuers (Issuer + "/oauth2/" + server). Default:
	// the scheme and host of each request.
	Issuer string
	// SchemaShapes makes v1 responses use the schema's shapes (roles as an array, name as an
	// object) instead of the seed examples' shapes (roles and name as strings), to exercise a
	// client's tolerance of both.
	SchemaShapes bool
}

// User is a seeded user.
type User struct {
	// Username logs in (v1 username, OAuth2 login, ECE username). Required.
	Username string `json:"username"`
	// Password is required.
	Password string `json:"password"`
	// Account is the 24-character merchant account (tenant) id the user belongs to.
	Account string `json:"account,omitempty"`
	// ID is the 24-hex user id. Default: derived from the username, so it is stable.
	ID string `json:"id,omitempty"`
	// FirstName and LastName make up the user's name.
	FirstName string `json:"first_name,omitempty"`
	LastName  string `json:"last_name,omitempty"`
	// Email defaults to the username when that looks like an address, else username@example.com.
	Email string `json:"email,omitempty"`
	// Roles are role names. Default: ["customer"].
	Roles []string `json:"roles,omitempty"`
	// Deactivated users cannot log in or refresh.
	Deactivated bool `json:"deactivated,omitempty"`
}

// Client is an OAuth2 application.
type Client struct {
	// ID is the client id. Required.
	ID string `json:"id"`
	// Secret authenticates a confidential client (system apps, and user apps without PKCE).
	// Empty means a public client, which must use PKCE.
	Secret string `json:"secret,omitempty"`
	// RedirectURIs lists the exact redirect URIs the client may use. Empty allows any absolute
	// http or https URI, which is convenient for local demos.
	RedirectURIs []string `json:"redirect_uris,omitempty"`
}

// Emulator is the fabric Identity emulator. Create it with New; it is safe for concurrent use.
type Emulator struct {
	cfg    Config
	logger *zap.Logger
	mux    *http.ServeMux
	// endpoints holds the endpoint names registered by route.
	endpoints map[string]bool

	skew atomic.Int64 // nanoseconds added to the wall clock

	mu        sync.Mutex
	keys      *keyRing
	users     map[string]*user // by user id
	usernames map[string]*user // by lower-cased username
	clients   map[string]Client
	tokens    map[string]*token // by jti, or by value for opaque tokens
	codes     map[string]*authCode
	minted    int

	control *control
}

// New returns an emulator for cfg. It fails on an invalid configuration: a user without a name or
// password, duplicate users or clients, an account id that is not 24 characters.
func New(cfg Config, logger *zap.Logger) (*Emulator, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if cfg.AccessLifetime <= 0 {
		cfg.AccessLifetime = 30 * time.Minute
	}
	if cfg.RefreshLifetime <= 0 {
		cfg.RefreshLifetime = 45 * 24 * time.Hour
	}
	if cfg.ClientTokenLifetime <= 0 {
		cfg.ClientTokenLifetime = 10 * time.Minute
	}
	if cfg.Audience == "" {
		cfg.Audience = "api://default"
	}
	cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	keys, err := defaultKeyRing()
	if err != nil {
		return nil, err
	}
	e := &Emulator{
		cfg:       cfg,
		logger:    logger,
		keys:      keys,
		users:     map[string]*user{},
		usernames: map[string]*user{},
		clients:   map[string]Client{},
		tokens:    map[string]*token{},
		codes:     map[string]*authCode{},
		control:   newControl(),
	}
	for _, u := range cfg.Users {
		if _, err := e.addUser(u, "customer"); err != nil {
			return nil, err
		}
	}
	for _, c := range cfg.Clients {
		if c.ID == "" {
			return nil, errors.New("client: id is required")
		}
		if _, dup := e.clients[c.ID]; dup {
			return nil, fmt.Errorf("client %q: defined twice", c.ID)
		}
		e.clients[c.ID] = c
	}
	e.mux = http.NewServeMux()
	e.endpoints = map[string]bool{}
	e.routes()
	return e, nil
}

// now is the emulator's clock: the wall clock shifted by the skew set through the control API.
func (e *Emulator) now() time.Time {
	return time.Now().Add(time.Duration(e.skew.Load()))
}

// ServeHTTP dispatches to the endpoint for r. Unknown paths get a JSON 404 (or 405 when only the
// method is wrong), never an HTML page.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := e.mux.Handler(r)
	if pattern == "" {
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, r)
		if allow := probe.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		status := probe.status
		if status != http.StatusMethodNotAllowed {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]string{
			"error":   strings.ToUpper(strings.ReplaceAll(http.StatusText(status), " ", "_")),
			"code":    fmt.Sprint(status),
			"message": fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, strings.ToLower(http.StatusText(status))),
		})
		return
	}
	e.mux.ServeHTTP(w, r) // sets the path values that Handler does not
}

// statusProbe records the status the mux would answer for an unmatched request.
type statusProbe struct {
	header http.Header
	status int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(status int)      { p.status = status }

// route registers h for pattern under an endpoint name. Every call is counted under that name,
// then the faults switched on for it are applied, then h runs.
func (e *Emulator) route(pattern, name string, d dialect, h http.HandlerFunc) {
	e.routeSub(pattern, name, d, nil, h)
}

// routeSub is route for an endpoint whose calls also belong to a sub-endpoint, named
// name + "." + sub(w, r) (the token endpoint's grant types: "oauth2.token.refresh_token"). A call
// counts under both names, and a fault that matches either applies once.
func (e *Emulator) routeSub(pattern, name string, d dialect, sub func(http.ResponseWriter, *http.Request) string, h http.HandlerFunc) {
	e.endpoints[name] = true
	e.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		names := []string{name}
		if sub != nil {
			if s := sub(w, r); s != "" {
				names = append(names, name+"."+s)
			}
		}
		for _, n := range names {
			e.control.count(n)
		}
		if e.applyFaults(w, r, d, names) {
			return
		}
		h(w, r)
	})
}

// routes registers every endpoint. The endpoint names are the keys of the call counters and the
// targets of faults; README.md lists them.
func (e *Emulator) routes() {
	e.v1Routes()
	e.umsRoutes()
	e.oauth2Routes()
	e.eceRoutes()
	e.controlRoutes()
}

// stableID derives a deterministic hex id of n characters from parts, so seeded users keep their
// ids across restarts and the README can show them.
func stableID(n int, parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(sum[:])[:n]
}
