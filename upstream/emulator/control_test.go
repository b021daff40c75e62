package emulator

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// withProbe adds a synthetic endpoint "probe.ok" in dialect d that answers 200 "ok", so faults can
// be tested apart from any real endpoint.
func withProbe(t *testing.T, d dialect) (*Emulator, string) {
	t.Helper()
	e, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.route("GET /probe", "probe.ok", d, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	return e, newHTTPServer(t, e)
}

func TestFaultEffects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		d       dialect
		fault   Fault
		status  int
		body    string
		errCode string // x-cloud-error-codes
	}{
		{"v1 500", dialectV1, Fault{Status: 500}, 500, `{"code":"500","error":"INTERNAL_SERVER_ERROR","message":"Internal server error"}`, ""},
		{"v1 503", dialectV1, Fault{Status: 503}, 503, `{"code":"503","error":"SERVICE_UNAVAILABLE","message":"Service Unavailable"}`, ""},
		{"ece 501", dialectECE, Fault{Status: 501}, 501, `{"errors":[{"code":"authc.no_authentication_cluster","fields":[],"message":"The administrator needs to configure the authentication cluster."}]}`, "authc.no_authentication_cluster"},
		{"ece 502", dialectECE, Fault{Status: 502}, 502, `{"errors":[{"code":"authc.authentication_cluster_error","fields":[],"message":"The authentication cluster failed to process the request. The response body contains details about the error."}]}`, "authc.authentication_cluster_error"},
		{"ece reject", dialectECE, Fault{Reject: true}, 401, `{"errors":[{"code":"root.unauthorized","fields":[],"message":"The authentication token is invalid or expired."}]}`, "root.unauthorized"},
		{"oauth2 503", dialectOAuth2, Fault{Status: 503}, 503, `{"error":"temporarily_unavailable","error_description":"The service is temporarily unavailable."}`, ""},
		{"oauth2 reject", dialectOAuth2, Fault{Reject: true}, 401, `{"error":"invalid_token","error_description":"The access token is invalid."}`, ""},
		{"ums 500", dialectUMS, Fault{Status: 500}, 500, `{"code":"INTERNAL_SERVER_ERROR","message":"The request was received but an internal error occurred"}`, ""},
		{"v1 reject", dialectV1, Fault{Reject: true}, 401, `{"code":"401","error":"UNAUTHORIZED","message":"Invalid token"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, base := withProbe(t, tc.d)
			tc.fault.Endpoint = "probe.ok"
			addFault(t, base, tc.fault)
			r := call{method: "GET", path: "/probe"}.do(t, base)
			if r.status != tc.status || string(r.body) != tc.body {
				t.Fatalf("got %d %s\nwant %d %s", r.status, r.body, tc.status, tc.body)
			}
			if got := r.header.Get("x-cloud-error-codes"); got != tc.errCode {
				t.Fatalf("x-cloud-error-codes %q, want %q", got, tc.errCode)
			}
		})
	}
}

func TestFaultAfterTimesAndWildcards(t *testing.T) {
	_, base := withProbe(t, dialectV1)
	addFault(t, base, Fault{Endpoint: "probe.*", Status: 503, After: 1, Times: 2})
	var got []int
	for range 5 {
		got = append(got, call{method: "GET", path: "/probe"}.do(t, base).status)
	}
	if want := []int{200, 503, 503, 200, 200}; !slices.Equal(got, want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	var listed struct{ Faults []Fault }
	if err := json.Unmarshal(call{method: "GET", path: ControlPrefix + "faults"}.do(t, base).want(t, 200).body, &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed.Faults) != 1 || listed.Faults[0].Applied != 2 {
		t.Fatalf("faults %+v, want one applied twice", listed.Faults)
	}
	if c := calls(t, base); c.Calls["probe.ok"] != 5 {
		t.Fatalf("calls %v: faulted calls count too", c.Calls)
	}

	call{method: "DELETE", path: ControlPrefix + "faults/" + strconv.Itoa(listed.Faults[0].ID)}.do(t, base).want(t, http.StatusNoContent)
	call{method: "DELETE", path: ControlPrefix + "faults/" + strconv.Itoa(listed.Faults[0].ID)}.do(t, base).wantError(t, 404, "FAULT_NOT_FOUND")

	addFault(t, base, Fault{Endpoint: "*", Reject: true})
	call{method: "GET", path: "/probe"}.do(t, base).want(t, 401)
	call{method: "POST", path: ControlPrefix + "reset"}.do(t, base).want(t, http.StatusNoContent)
	call{method: "GET", path: "/probe"}.do(t, base).want(t, 200)
	if c := calls(t, base); len(c.Calls) != 1 || c.Calls["probe.ok"] != 1 {
		t.Fatalf("calls after reset %v, want only the call since", c.Calls)
	}
}

func TestFaultValidation(t *testing.T) {
	_, base := withProbe(t, dialectV1)
	for _, body := range []string{
		`{"status":500}`,
		`{"endpoint":"probe.ok"}`,
		`{"endpoint":"probe.ok","status":200}`,
		`{"endpoint":"probe.ok","status":500,"times":-1}`,
		`{"endpoint":"probe.ok","latency":"soon"}`,
		`{"endpoint":"probe.ok","latency":250}`,
		`{"endpoint":"v9.nothing","status":500}`,
		`{"endpoint":"probe.ok","status":500`,
	} {
		r := call{method: "POST", path: ControlPrefix + "faults", body: body}.do(t, base)
		r.wantError(t, 400, "BAD_REQUEST")
	}
}

// TestFaultLatency checks that latency delays the answer and that a client giving up is not kept
// waiting; timings are not asserted beyond "not answered before the client's deadline".
func TestFaultLatency(t *testing.T) {
	_, base := withProbe(t, dialectV1)
	addFault(t, base, Fault{Endpoint: "probe.ok", Latency: Duration(time.Hour)})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/probe", nil)
	_, err := http.DefaultClient.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a call with an hour of latency: %v, want the client's deadline", err)
	}
}

func TestFaultDrop(t *testing.T) {
	_, base := withProbe(t, dialectV1)
	addFault(t, base, Fault{Endpoint: "probe.ok", Drop: true, Times: 1})
	// A fresh connection: on a reused one, Go's client would retry the GET by itself.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := fresh.Get(base + "/probe")
	if err == nil {
		res.Body.Close()
		t.Fatalf("a dropped call answered %d", res.StatusCode)
	}
	call{method: "GET", path: "/probe"}.do(t, base).want(t, 200)
}

func TestClockSkew(t *testing.T) {
	e, base := newServer(t, testConfig())
	tok := e.mint(jwt.MapClaims{"sub": "x"}, token{kind: kindV1Access, exp: e.now().Add(time.Minute)})
	if _, err := e.check(tok, kindV1Access); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	r := call{method: "PUT", path: ControlPrefix + "clock", body: `{"skew":"2m"}`}.do(t, base).want(t, 200)
	if m := r.object(t); m["skew"] != "2m0s" {
		t.Fatalf("clock answer %s", r.body)
	}
	if _, err := e.check(tok, kindV1Access); !errors.Is(err, errTokenExpired) {
		t.Fatalf("token past its exp on the skewed clock: %v, want errTokenExpired", err)
	}
	call{method: "PUT", path: ControlPrefix + "clock", body: `{}`}.do(t, base).wantError(t, 400, "BAD_REQUEST")
}

func TestKeyRotation(t *testing.T) {
	e, base := newServer(t, testConfig())
	old := e.mint(jwt.MapClaims{}, token{kind: kindV1Access, exp: e.now().Add(time.Minute)})

	var rotated struct {
		Kid       string   `json:"kid"`
		Published []string `json:"published"`
	}
	if err := json.Unmarshal(call{method: "POST", path: ControlPrefix + "keys/rotate"}.do(t, base).want(t, 200).body, &rotated); err != nil {
		t.Fatal(err)
	}
	if len(rotated.Published) != 2 || rotated.Published[0] != rotated.Kid {
		t.Fatalf("after rotation: %+v, want the new key first and the old one still published", rotated)
	}
	fresh := e.mint(jwt.MapClaims{}, token{kind: kindV1Access, exp: e.now().Add(time.Minute)})
	if kid := headerKid(t, fresh); kid != rotated.Kid {
		t.Fatalf("new tokens signed by %q, want %q", kid, rotated.Kid)
	}
	if _, err := e.check(old, kindV1Access); err != nil {
		t.Fatalf("a token of the old, still published key: %v", err)
	}

	call{method: "POST", path: ControlPrefix + "keys/rotate", body: `{"drop_old":true}`}.do(t, base).want(t, 200)
	if _, err := e.check(old, kindV1Access); !errors.Is(err, errTokenInvalid) {
		t.Fatalf("a token of a dropped key: %v, want errTokenInvalid", err)
	}

	// Rotation is per emulator: another one still signs with the process key.
	other, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if kid := headerKid(t, other.mint(jwt.MapClaims{}, token{kind: kindV1Access, exp: other.now().Add(time.Minute)})); kid == rotated.Kid {
		t.Fatal("rotating one emulator's keys changed another's")
	}
}

func TestPatchUser(t *testing.T) {
	e, base := newServer(t, testConfig())
	u := e.userByName("pat")
	tok := e.mint(jwt.MapClaims{}, token{kind: kindV1Access, userID: u.id, exp: e.now().Add(time.Minute)})
	call{method: "PATCH", path: ControlPrefix + "users/pat", body: `{"active":false}`}.do(t, base).want(t, 200)
	if _, err := e.check(tok, kindV1Access); !errors.Is(err, errUserInactive) {
		t.Fatalf("token of a deactivated user: %v", err)
	}
	if _, err := e.authenticate("pat", "pat-password"); !errors.Is(err, errUserInactive) {
		t.Fatalf("login of a deactivated user: %v", err)
	}
	call{method: "PATCH", path: ControlPrefix + "users/pat", body: `{"active":true,"password":"new-one"}`}.do(t, base).want(t, 200)
	if _, err := e.authenticate("pat", "new-one"); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	call{method: "PATCH", path: ControlPrefix + "users/nobody", body: `{"active":true}`}.do(t, base).wantError(t, 404, "USER_NOT_FOUND")
}

// TestRedeemOnce races many exchanges of one refresh token: exactly one may win, every other is
// reuse. This is what lets sitegate's tests prove a refresh happened exactly once.
func TestRedeemOnce(t *testing.T) {
	e, base := newServer(t, testConfig())
	rt := e.mint(jwt.MapClaims{}, token{kind: kindV1Refresh, userID: e.userByName("pat").id, exp: e.now().Add(time.Hour)})
	const n = 32
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.redeem(rt, kindV1Refresh); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, errTokenReused) {
				t.Errorf("redeem: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || calls(t, base).RefreshTokenReuse != n-1 {
		t.Fatalf("%d wins and %d reuses, want 1 and %d", wins, calls(t, base).RefreshTokenReuse, n-1)
	}
}

func TestTokensRefusedWhenForgedOrMisused(t *testing.T) {
	e, _ := newServer(t, testConfig())
	access := e.mint(jwt.MapClaims{}, token{kind: kindV1Access, exp: e.now().Add(time.Minute)})
	if _, err := e.check(access, kindV1Refresh); !errors.Is(err, errTokenInvalid) {
		t.Fatalf("access token used as a refresh token: %v", err)
	}
	parts := strings.Split(access, ".")
	for name, forged := range map[string]string{
		"tampered payload": parts[0] + "." + b64([]byte(`{"jti":"x","exp":9999999999}`)) + "." + parts[2],
		"alg none":         b64([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".",
		"not a token":      "garbage",
		"empty":            "",
	} {
		if _, err := e.check(forged, kindV1Access); !errors.Is(err, errTokenInvalid) {
			t.Errorf("%s: %v, want errTokenInvalid", name, err)
		}
	}
	if !e.revoke(access) {
		t.Fatal("revoke did not know the token")
	}
	if _, err := e.check(access, kindV1Access); !errors.Is(err, errTokenInvalid) {
		t.Fatalf("revoked token: %v", err)
	}
}

func TestUnknownPathsAnswerJSON(t *testing.T) {
	_, base := newServer(t, testConfig())
	call{method: "GET", path: "/nowhere"}.do(t, base).wantError(t, 404, "NOT_FOUND")
	r := call{method: "DELETE", path: ControlPrefix + "calls"}.do(t, base)
	r.wantError(t, 405, "METHOD_NOT_ALLOWED")
	if r.header.Get("Allow") == "" {
		t.Fatal("405 without Allow")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"user without name":     {Users: []User{{Password: "p"}}},
		"user without password": {Users: []User{{Username: "u"}}},
		"duplicate user":        {Users: []User{{Username: "u", Password: "p"}, {Username: "U", Password: "q"}}},
		"bad account":           {Users: []User{{Username: "u", Password: "p", Account: "1234"}}},
		"client without id":     {Clients: []Client{{Secret: "s"}}},
		"duplicate client":      {Clients: []Client{{ID: "c"}, {ID: "c"}}},
	} {
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestThumbprint checks the kid against the example of RFC 7638 §3.1.
func TestThumbprint(t *testing.T) {
	n := "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
	pub := rsaPublic(t, n, "AQAB")
	if got, want := thumbprint(pub), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Fatalf("thumbprint %s, want %s", got, want)
	}
}

func headerKid(t *testing.T, tok string) string {
	t.Helper()
	tk, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := tk.Header["kid"].(string)
	return kid
}

func rsaPublic(t *testing.T, n, e string) *rsa.PublicKey {
	t.Helper()
	nb, err1 := base64.RawURLEncoding.DecodeString(n)
	eb, err2 := base64.RawURLEncoding.DecodeString(e)
	if err1 != nil || err2 != nil {
		t.Fatal("bad base64url")
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(new(big.Int).SetBytes(eb).Int64())}
}
