package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"
)

// The fixtures every test can use.
const (
	testAccount = "5f689caa4216e7000750d1ef"
	testSite    = `{"account":"5f689caa4216e7000750d1ef","channel":12,"stage":"production"}`
	testAPIKey  = "test-api-key"
)

// testConfig is a small configuration: one active and one deactivated user, a confidential and a
// public client, an API key.
func testConfig() Config {
	return Config{
		APIKey: testAPIKey,
		Users: []User{
			{Username: "pat", Password: "pat-password", Account: testAccount, FirstName: "Pat", LastName: "Kake"},
			{Username: "gone", Password: "gone-password", Account: testAccount, Deactivated: true},
		},
		Clients: []Client{
			{ID: "sysapp", Secret: "sysapp-secret"},
			{ID: "webapp", Secret: "webapp-secret", RedirectURIs: []string{"http://app.test/callback"}},
			{ID: "spa", RedirectURIs: []string{"http://app.test/callback"}},
		},
	}
}

// newServer starts an emulator for cfg on a loopback httptest server.
func newServer(t *testing.T, cfg Config) (*Emulator, string) {
	t.Helper()
	e, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e, newHTTPServer(t, e)
}

// newHTTPServer serves e on a loopback httptest server and returns its URL.
func newHTTPServer(t *testing.T, e *Emulator) string {
	t.Helper()
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return srv.URL
}

// noRedirect is a client that returns redirects instead of following them.
var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// call is one HTTP request to the emulator. A body that is a string or []byte is sent as is;
// url.Values is sent as a form; anything else is sent as JSON.
type call struct {
	method string
	path   string
	header http.Header
	body   any
}

// response is what a call got back.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (c call) do(t *testing.T, base string) response {
	t.Helper()
	var body io.Reader
	ct := ""
	switch b := c.body.(type) {
	case nil:
	case string:
		body, ct = strings.NewReader(b), "application/json"
	case []byte:
		body, ct = bytes.NewReader(b), "application/json"
	case url.Values:
		body, ct = strings.NewReader(b.Encode()), "application/x-www-form-urlencoded"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("encoding body: %v", err)
		}
		body, ct = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequest(c.method, base+c.path, body)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for k, vs := range c.header {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	res, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// v1Header is the header a well-behaved v1 client sends.
func v1Header() http.Header {
	return http.Header{"X-Site-Context": {testSite}, "X-Api-Key": {testAPIKey}}
}

// with returns h plus the given key/value pairs.
func with(h http.Header, kv ...string) http.Header {
	out := h.Clone()
	if out == nil {
		out = http.Header{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}

// object decodes a JSON object body.
func (r response) object(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

// want fails the test unless the response has status.
func (r response) want(t *testing.T, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body: %s", r.status, status, r.body)
	}
	return r
}

// wantError fails the test unless the response is a v1 APIError with status and error code.
func (r response) wantError(t *testing.T, status int, code string) {
	t.Helper()
	r.want(t, status)
	m := r.object(t)
	if m["error"] != code || m["code"] != fmt.Sprint(status) {
		t.Fatalf("error body %s, want error %q code %q", r.body, code, fmt.Sprint(status))
	}
	if msg, _ := m["message"].(string); msg == "" {
		t.Fatalf("error body %s has no message", r.body)
	}
}

// assertShape checks that got has every field of want, with the same JSON type, recursively:
// the seed documents' examples are the want. Arrays are checked element by element against the
// first element of want's array. A field of want listed in nullable may be null in got.
func assertShape(t *testing.T, where string, got, want any, nullable ...string) {
	t.Helper()
	var problems []string
	shapeDiff(&problems, where, got, want, nullable)
	if len(problems) > 0 {
		sort.Strings(problems)
		t.Errorf("response does not match the seed example:\n  %s", strings.Join(problems, "\n  "))
	}
}

func shapeDiff(problems *[]string, path string, got, want any, nullable []string) {
	if got == nil {
		for _, n := range nullable {
			if strings.HasSuffix(path, "."+n) {
				return
			}
		}
	}
	if jsonKind(got) != jsonKind(want) {
		*problems = append(*problems, fmt.Sprintf("%s: %s, want %s", path, jsonKind(got), jsonKind(want)))
		return
	}
	switch w := want.(type) {
	case map[string]any:
		g := got.(map[string]any)
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				*problems = append(*problems, fmt.Sprintf("%s.%s: missing", path, k))
				continue
			}
			shapeDiff(problems, path+"."+k, gv, wv, nullable)
		}
	case []any:
		g := got.([]any)
		if len(w) == 0 {
			return
		}
		if len(g) == 0 {
			*problems = append(*problems, fmt.Sprintf("%s: empty array, want elements like the example", path))
			return
		}
		for i, gv := range g {
			shapeDiff(problems, fmt.Sprintf("%s[%d]", path, i), gv, w[0], nullable)
		}
	}
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64, json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// example parses a JSON example transcribed from a seed document.
func example(t *testing.T, src string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(src), &v); err != nil {
		t.Fatalf("bad example: %v", err)
	}
	return v
}

// calls reads the emulator's call counters.
func calls(t *testing.T, base string) Calls {
	t.Helper()
	var c Calls
	r := call{method: "GET", path: ControlPrefix + "calls"}.do(t, base).want(t, http.StatusOK)
	if err := json.Unmarshal(r.body, &c); err != nil {
		t.Fatalf("calls: %v", err)
	}
	return c
}

// addFault switches a fault on.
func addFault(t *testing.T, base string, f Fault) {
	t.Helper()
	call{method: "POST", path: ControlPrefix + "faults", body: f}.do(t, base).want(t, http.StatusCreated)
}

// setClock shifts the emulator's clock by skew (a Go duration such as "45m").
func setClock(t *testing.T, base, skew string) {
	t.Helper()
	call{method: "PUT", path: ControlPrefix + "clock", body: map[string]string{"skew": skew}}.do(t, base).want(t, http.StatusOK)
}
