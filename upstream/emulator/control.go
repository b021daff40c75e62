package emulator

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ControlPrefix is the path under which the control API is served.
const ControlPrefix = "/_emulator/"

// Fault is a fault switched on for one endpoint (by name, e.g. "v1.refresh"), a family of endpoints
// ("v1.*") or every endpoint ("*"). Its effects apply in this order: Latency, then the first of
// Drop, Status and Reject that is set.
type Fault struct {
	// ID identifies the fault; assigned when it is added.
	ID int `json:"id"`
	// Endpoint is an endpoint name, a prefix ending in ".*", or "*". Required.
	Endpoint string `json:"endpoint"`
	// Latency is added before the endpoint answers, e.g. "250ms".
	Latency Duration `json:"latency,omitempty"`
	// Drop closes the connection without an answer (a TCP reset where possible), which a client
	// sees as a network error, as it would a refused connection.
	Drop bool `json:"drop,omitempty"`
	// Status answers with this status (400–599) in the endpoint's error shape.
	Status int `json:"status,omitempty"`
	// Reject refuses the credentials presented, as the endpoint does for a bad password, an
	// invalid refresh token or an invalid bearer token.
	Reject bool `json:"reject,omitempty"`
	// After lets this many matching calls through before the fault applies.
	After int `json:"after,omitempty"`
	// Times is how many calls the fault applies to; 0 means until it is removed.
	Times int `json:"times,omitempty"`
	// Applied counts the calls the fault has applied to. Read-only.
	Applied int `json:"applied"`

	seen int
}

// Duration is a time.Duration written in JSON as a Go duration string ("250ms").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string such as "1.5s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"250ms\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}

func (f *Fault) validate() error {
	switch {
	case f.Endpoint == "":
		return badRequest("endpoint is required")
	case f.Latency < 0:
		return badRequest("latency must not be negative")
	case f.Status != 0 && (f.Status < 400 || f.Status > 599):
		return badRequest("status must be between 400 and 599")
	case f.After < 0 || f.Times < 0:
		return badRequest("after and times must not be negative")
	case f.Latency == 0 && !f.Drop && f.Status == 0 && !f.Reject:
		return badRequest("a fault needs latency, drop, status or reject")
	}
	return nil
}

func (f *Fault) matches(name string) bool {
	switch {
	case f.Endpoint == "*":
		return true
	case strings.HasSuffix(f.Endpoint, ".*"):
		return strings.HasPrefix(name, strings.TrimSuffix(f.Endpoint, "*"))
	default:
		return f.Endpoint == name
	}
}

// control holds the call counters and the faults.
type control struct {
	mu     sync.Mutex
	calls  map[string]int
	reuse  int
	faults []*Fault
	nextID int
}

func newControl() *control { return &control{calls: map[string]int{}, nextID: 1} }

func (c *control) count(name string) {
	c.mu.Lock()
	c.calls[name]++
	c.mu.Unlock()
}

func (c *control) reused() {
	c.mu.Lock()
	c.reuse++
	c.mu.Unlock()
}

// effects returns what the faults matching any of a call's names do to it, and counts the call
// once against each of them.
func (c *control) effects(names []string) (latency time.Duration, terminal *Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.faults {
		if !slices.ContainsFunc(names, f.matches) {
			continue
		}
		f.seen++
		if f.seen <= f.After || (f.Times > 0 && f.Applied >= f.Times) {
			continue
		}
		f.Applied++
		latency += time.Duration(f.Latency)
		if terminal == nil && (f.Drop || f.Status != 0 || f.Reject) {
			cp := *f
			terminal = &cp
		}
	}
	return latency, terminal
}

// applyFaults applies the faults for a call of the named endpoint (and sub-endpoint). It reports
// whether the call was answered.
func (e *Emulator) applyFaults(w http.ResponseWriter, r *http.Request, d dialect, names []string) bool {
	latency, f := e.control.effects(names)
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	switch {
	case f == nil:
		return false
	case f.Drop:
		dropConnection(w)
	case f.Status != 0:
		failStatus(w, d, f.Status)
	default:
		reject(w, d, names[len(names)-1])
	}
	return true
}

// dropConnection closes the client connection without writing a response.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 or a writer that cannot be hijacked: abort the stream instead.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // reset rather than an orderly close
	}
	_ = conn.Close()
}

// reject answers as endpoint name does when it refuses the credentials presented.
func reject(w http.ResponseWriter, d dialect, name string) {
	switch {
	case name == "v1.login" || name == "v1.refresh":
		fail(w, d, http.StatusBadRequest, "LOCAL_AUTH_FAILED", "Username or password is invalid")
	case d == dialectV1:
		fail(w, d, http.StatusUnauthorized, "UNAUTHORIZED", "Invalid token")
	case d == dialectUMS:
		fail(w, d, http.StatusUnauthorized, "UNAUTHORIZED", "Invalid token")
	case name == "oauth2.token.client_credentials":
		fail(w, d, http.StatusUnauthorized, "invalid_client", "Client authentication failed.")
	case name == "oauth2.token.authorization_code":
		fail(w, d, http.StatusBadRequest, "invalid_grant", "The authorization code is invalid or has expired.")
	case strings.HasPrefix(name, "oauth2.token"):
		fail(w, d, http.StatusBadRequest, "invalid_grant", "The refresh token is invalid or expired.")
	case d == dialectOAuth2:
		fail(w, d, http.StatusUnauthorized, "invalid_token", "The access token is invalid.")
	case name == "ece.login":
		fail(w, d, http.StatusUnauthorized, "root.unauthenticated", "The supplied authentication is invalid.")
	default:
		fail(w, d, http.StatusUnauthorized, "root.unauthorized", "The authentication token is invalid or expired.")
	}
}

// controlRoutes registers the control API. Its calls are not counted and faults never apply.
func (e *Emulator) controlRoutes() {
	e.mux.HandleFunc("GET "+ControlPrefix+"endpoints", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]string{"endpoints": e.Endpoints()})
	})
	e.mux.HandleFunc("GET "+ControlPrefix+"calls", e.ctlCalls)
	e.mux.HandleFunc("POST "+ControlPrefix+"reset", e.ctlReset)
	e.mux.HandleFunc("GET "+ControlPrefix+"faults", e.ctlFaults)
	e.mux.HandleFunc("POST "+ControlPrefix+"faults", e.ctlAddFault)
	e.mux.HandleFunc("DELETE "+ControlPrefix+"faults", e.ctlClearFaults)
	e.mux.HandleFunc("DELETE "+ControlPrefix+"faults/{id}", e.ctlDeleteFault)
	e.mux.HandleFunc("GET "+ControlPrefix+"clock", e.ctlClock)
	e.mux.HandleFunc("PUT "+ControlPrefix+"clock", e.ctlSetClock)
	e.mux.HandleFunc("POST "+ControlPrefix+"keys/rotate", e.ctlRotateKeys)
	e.mux.HandleFunc("PATCH "+ControlPrefix+"users/{username}", e.ctlPatchUser)
}

// Calls is the answer of GET /_emulator/calls.
type Calls struct {
	// Calls counts the calls per endpoint name since start or the last reset.
	Calls map[string]int `json:"calls"`
	// RefreshTokenReuse counts refresh tokens (and ECE tokens) presented again after they were
	// exchanged under rotation. A client that refreshes exactly once keeps it at zero.
	RefreshTokenReuse int `json:"refresh_token_reuse"`
}

func (e *Emulator) ctlCalls(w http.ResponseWriter, _ *http.Request) {
	c := e.control
	c.mu.Lock()
	out := Calls{Calls: make(map[string]int, len(c.calls)), RefreshTokenReuse: c.reuse}
	for k, v := range c.calls {
		out.Calls[k] = v
	}
	c.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// ctlReset clears counters, faults and clock skew. Users, clients, keys and tokens are kept.
func (e *Emulator) ctlReset(w http.ResponseWriter, _ *http.Request) {
	c := e.control
	c.mu.Lock()
	c.calls, c.reuse, c.faults = map[string]int{}, 0, nil
	c.mu.Unlock()
	e.skew.Store(0)
	e.logger.Info("counters, faults and clock reset")
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) ctlFaults(w http.ResponseWriter, _ *http.Request) {
	c := e.control
	c.mu.Lock()
	out := make([]Fault, 0, len(c.faults))
	for _, f := range c.faults {
		out = append(out, *f)
	}
	c.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string][]Fault{"faults": out})
}

func (e *Emulator) ctlAddFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	if err := decodeJSON(r, &f); err != nil {
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", err.Error())
		return
	}
	if err := f.validate(); err != nil {
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", err.Error())
		return
	}
	if !e.knownEndpoint(f.Endpoint) {
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", fmt.Sprintf("endpoint %q names no endpoint; GET %sendpoints lists them", f.Endpoint, ControlPrefix))
		return
	}
	c := e.control
	c.mu.Lock()
	f.ID, f.Applied, f.seen = c.nextID, 0, 0
	c.nextID++
	c.faults = append(c.faults, &f)
	out := f
	c.mu.Unlock()
	e.logger.Info("fault switched on", zap.Int("id", f.ID), zap.String("endpoint", f.Endpoint),
		zap.Duration("latency", time.Duration(f.Latency)), zap.Bool("drop", f.Drop), zap.Int("status", f.Status),
		zap.Bool("reject", f.Reject), zap.Int("after", f.After), zap.Int("times", f.Times))
	writeJSON(w, http.StatusCreated, out)
}

func (e *Emulator) ctlClearFaults(w http.ResponseWriter, _ *http.Request) {
	c := e.control
	c.mu.Lock()
	c.faults = nil
	c.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) ctlDeleteFault(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(r.PathValue("id"))
	c := e.control
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, f := range c.faults {
		if err == nil && f.ID == id {
			c.faults = append(c.faults[:i], c.faults[i+1:]...)
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	fail(w, dialectV1, http.StatusNotFound, "FAULT_NOT_FOUND", "no fault with id "+strconv.Quote(r.PathValue("id")))
}

type clock struct {
	Now  time.Time `json:"now"`
	Skew Duration  `json:"skew"`
}

func (e *Emulator) ctlClock(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, clock{Now: e.now().UTC(), Skew: Duration(e.skew.Load())})
}

// ctlSetClock shifts the emulator's clock: tokens are minted and checked at wall clock + skew.
func (e *Emulator) ctlSetClock(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Skew *Duration `json:"skew"`
	}
	if err := decodeJSON(r, &body); err != nil {
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", err.Error())
		return
	}
	if body.Skew == nil {
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", "skew is required")
		return
	}
	e.skew.Store(int64(*body.Skew))
	e.logger.Info("clock skewed", zap.Duration("skew", time.Duration(*body.Skew)))
	e.ctlClock(w, r)
}

// ctlRotateKeys makes a new key sign from now on. The old keys stay in the JWKS unless
// {"drop_old": true}, in which case the tokens they signed stop verifying.
func (e *Emulator) ctlRotateKeys(w http.ResponseWriter, r *http.Request) {
	var body struct {
		DropOld bool `json:"drop_old"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &body); err != nil {
			fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", err.Error())
			return
		}
	}
	k, err := newSigningKey()
	if err != nil {
		failStatus(w, dialectV1, http.StatusInternalServerError)
		return
	}
	e.mu.Lock()
	e.keys.rotate(k, body.DropOld)
	kids := make([]string, 0, len(e.keys.keys))
	for _, s := range e.keys.keys {
		kids = append(kids, s.kid)
	}
	e.mu.Unlock()
	e.logger.Info("signing key rotated", zap.String("kid", k.kid), zap.Bool("drop_old", body.DropOld))
	writeJSON(w, http.StatusOK, map[string]any{"kid": k.kid, "published": kids})
}

// ctlPatchUser deactivates or reactivates a user ({"active": false}) or sets a password. A
// deactivated user's tokens stop working at once.
func (e *Emulator) ctlPatchUser(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Active   *bool   `json:"active"`
		Password *string `json:"password"`
	}
	if err := decodeJSON(r, &body); err != nil {
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", err.Error())
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	u := e.usernames[strings.ToLower(r.PathValue("username"))]
	if u == nil {
		fail(w, dialectV1, http.StatusNotFound, "USER_NOT_FOUND", "User not found")
		return
	}
	if body.Active != nil {
		u.active = *body.Active
	}
	if body.Password != nil && *body.Password != "" {
		u.password = *body.Password
	}
	e.logger.Info("user changed", zap.String("username", u.username), zap.Bool("active", u.active),
		zap.Bool("password_changed", body.Password != nil && *body.Password != ""))
	writeJSON(w, http.StatusOK, map[string]any{"username": u.username, "userId": u.id, "active": u.active})
}

// Endpoints returns the endpoint names, sorted: the keys of the call counters.
func (e *Emulator) Endpoints() []string {
	names := make([]string, 0, len(e.endpoints))
	for n := range e.endpoints {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// knownEndpoint reports whether a fault's target names at least one endpoint.
func (e *Emulator) knownEndpoint(target string) bool {
	f := Fault{Endpoint: target}
	for n := range e.endpoints {
		if f.matches(n) {
			return true
		}
	}
	return false
}
