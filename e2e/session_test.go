package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestSessions runs sitegate's sessions end to end: two instances sharing one Redis, a fabric
// Identity emulator with faults, a recording upstream. Subtests run in order and share the
// instances; each starts from a reset emulator and signs in afresh.
func TestSessions(t *testing.T) {
	c := startCluster(t)
	t.Run("login refuses other sites, and wrong passwords like unknown users", c.testLogin)
	t.Run("session handle", c.testHandle)
	t.Run("cookie hygiene", c.testCookieHygiene)
	t.Run("refresh happens once across instances", c.testRefreshOnce)
	t.Run("ECE refreshes with the current token, once", c.testECE)
	t.Run("identity down", c.testIdentityDown)
	t.Run("identity slow", c.testIdentitySlow)
	t.Run("identity rejects the refresh", c.testIdentityRejects)
	t.Run("upstream 401: one forced refresh and a replay", c.testReplay)
	t.Run("logout on one instance is seen by the other at once", c.testLogout)
	t.Run("tampered cookie and moved ciphertext", c.testTampering)
	t.Run("idle timeout and lifetime", c.testTimeouts)
	t.Run("no secret in Redis", c.testRedisAtRest)
	t.Run("Redis outage", c.testRedisOutage)
	t.Run("no secret in logs or metrics", c.testNoSecretsInLogs)
}

// get sends a GET through the gateway with the session's credential (and extra headers).
func (c *cluster) get(t *testing.T, url string, s *session, extra http.Header) resp {
	t.Helper()
	h := s.cred()
	for k, v := range extra {
		h[k] = append(h[k], v...)
	}
	return c.send(t, "GET", url, h, "")
}

// ok checks a 200 from the upstream and returns the one request the upstream saw.
func (c *cluster) ok(t *testing.T, r resp) seen {
	t.Helper()
	return c.up.answered(t, r)
}

// refused checks a sitegate error that never reached the upstream.
func (c *cluster) refused(t *testing.T, r resp, status int, code string) {
	t.Helper()
	apiError(t, r.status, r.body, status, code)
	if status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="sitegate"`) {
		t.Errorf("401 without sitegate's challenge: %q", r.header.Get("WWW-Authenticate"))
	}
	if n := len(c.up.take()); n != 0 {
		t.Errorf("a refused request reached the upstream (%d)", n)
	}
}

func (c *cluster) testLogin(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	base := c.a.main
	creds := loginBody("demo", c.passwords["demo"], false)
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"foreign Origin", http.Header{"Origin": {"https://evil.example"}}},
		{"Origin of another port", http.Header{"Origin": {"http://127.0.0.1:1"}}},
		{"null Origin", http.Header{"Origin": {"null"}}},
		{"Sec-Fetch-Site cross-site", http.Header{"Sec-Fetch-Site": {"cross-site"}}},
		{"Sec-Fetch-Site same-site", http.Header{"Sec-Fetch-Site": {"same-site"}}},
		{"own Origin but Sec-Fetch-Site cross-site", http.Header{"Origin": {base}, "Sec-Fetch-Site": {"cross-site"}}},
	} {
		h := tc.header.Clone()
		h.Set("Content-Type", "application/json")
		r := c.send(t, "POST", base+"/.sitegate/login", h, creds)
		if r.status != http.StatusForbidden || !strings.Contains(r.body, `"CROSS_SITE_REQUEST"`) {
			t.Errorf("%s: got %d %s, want 403 CROSS_SITE_REQUEST", tc.name, r.status, r.body)
		}
		noCookie(t, r)
	}
	r := c.send(t, "POST", base+"/.sitegate/login", http.Header{"Content-Type": {"text/plain"}}, creds)
	apiError(t, r.status, r.body, http.StatusUnsupportedMediaType, "INVALID_REQUEST")
	if n := c.id.calls(t).Calls["v1.login"]; n != 0 {
		t.Fatalf("refused logins reached Identity (%d calls)", n)
	}
	r = c.send(t, "GET", base+"/.sitegate/login", nil, "")
	c.refused(t, r, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	if r.header.Get("Allow") != "POST" {
		t.Errorf("405 with Allow %q", r.header.Get("Allow"))
	}
	c.refused(t, c.send(t, "GET", base+"/.sitegate/nothing-here", nil, ""), http.StatusNotFound, "NOT_FOUND")

	// CORS: an allow-listed origin gets a preflight answer with credentials; others get none.
	pre := http.Header{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"POST"}}
	r = c.send(t, "OPTIONS", base+"/.sitegate/login", pre, "")
	if r.status != http.StatusNoContent || r.header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		r.header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("preflight from an allow-listed origin: %d %v", r.status, r.header)
	}
	pre.Set("Origin", "https://evil.example")
	if r = c.send(t, "OPTIONS", base+"/.sitegate/login", pre, ""); r.header.Get("Access-Control-Allow-Origin") != "" || r.status == http.StatusNoContent {
		t.Errorf("preflight from another origin: %d %v", r.status, r.header)
	}

	// The request's own origin and an allow-listed one may sign in.
	for _, h := range []http.Header{
		{"Origin": {base}, "Sec-Fetch-Site": {"same-origin"}},
		{"Origin": {"https://app.example"}, "Sec-Fetch-Site": {"cross-site"}},
	} {
		h.Set("Content-Type", "application/json; charset=utf-8")
		r := c.send(t, "POST", base+"/.sitegate/login", h, creds)
		ck := setCookie(t, r.header, cookieName)
		if r.status != http.StatusOK || ck == nil {
			t.Fatalf("login with %v: %d %s", h, r.status, r.body)
		}
		c.remember(ck.Value)
	}

	s := c.login(t, base, "demo", false)
	v := s.view
	if v.User.ID == "" || v.User.Account != demoAccount || v.Dialect != "fabric_v1" || len(v.User.Roles) == 0 ||
		time.Until(v.ExpiresAt) < time.Hour || time.Until(v.IdleExpiresAt) < 29*time.Minute {
		t.Errorf("login answer: %+v", v)
	}

	// A wrong password, an unknown user and a deactivated user are refused alike.
	c.id.setActive(t, "dave", false)
	defer c.id.setActive(t, "dave", true)
	var answers []resp
	for _, body := range []string{
		loginBody("demo", "not-the-password", false),
		loginBody("nobody", c.passwords["demo"], false),
		loginBody("dave", c.passwords["dave"], false),
	} {
		r := c.send(t, "POST", base+"/.sitegate/login", jsonHeader, body)
		apiError(t, r.status, r.body, http.StatusUnauthorized, "LOGIN_FAILED")
		noCookie(t, r)
		answers = append(answers, r)
	}
	for _, r := range answers[1:] {
		if r.body != answers[0].body || r.header.Get("WWW-Authenticate") != answers[0].header.Get("WWW-Authenticate") {
			t.Errorf("refused logins differ: %q %q vs %q %q", r.body, r.header.Get("WWW-Authenticate"),
				answers[0].body, answers[0].header.Get("WWW-Authenticate"))
		}
	}

	// A logout from another site is refused and leaves the session alone.
	h := s.cred()
	h.Set("Content-Type", "application/json")
	h.Set("Origin", "https://evil.example")
	c.refused(t, c.send(t, "POST", base+"/.sitegate/logout", h, ""), http.StatusForbidden, "CROSS_SITE_REQUEST")
	c.ok(t, c.get(t, c.b.main+"/orders", s, nil))

	// Signing in again with the old cookie ends the old session (no fixation).
	h = s.cred()
	h.Set("Content-Type", "application/json")
	r = c.send(t, "POST", base+"/.sitegate/login", h, creds)
	next := setCookie(t, r.header, cookieName)
	if r.status != http.StatusOK || next == nil || next.Value == s.id {
		t.Fatalf("login over a session: %d %q", r.status, r.header.Values("Set-Cookie"))
	}
	c.remember(next.Value)
	r = c.get(t, c.b.main+"/orders", s, nil)
	c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
	c.ok(t, c.get(t, c.b.main+"/orders", &session{id: next.Value}, nil))
}

func (c *cluster) testHandle(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	s := c.login(t, c.a.main, "demo", true) // checks: a handle, no Set-Cookie
	for _, in := range []*instance{c.a, c.b} {
		r := c.get(t, in.main+"/orders", s, nil)
		noCookie(t, r)
		got := c.ok(t, r)
		if got.bearer() != s.access {
			t.Errorf("%s: the upstream got Authorization %q, want the session's bearer", in.name, got.header.Values("Authorization"))
		}
		if got.header.Get("X-User-Id") != s.view.User.ID || strings.Contains(fmt.Sprint(got.header), s.id) {
			t.Errorf("%s: upstream headers %v", in.name, got.header)
		}
	}
	r := c.get(t, c.b.main+"/.sitegate/session", s, nil)
	if r.status != http.StatusOK || !strings.Contains(r.body, s.view.User.ID) || strings.Contains(r.body, s.id) || strings.Contains(r.body, "eyJ") {
		t.Errorf("session endpoint with a handle: %d %s", r.status, r.body)
	}

	// A cookie naming another session is a second credential.
	other := c.login(t, c.a.main, "carol", false)
	r = c.get(t, c.a.main+"/orders", s, other.cred())
	c.refused(t, r, http.StatusBadRequest, "INVALID_REQUEST")
	// The same session twice is one credential.
	c.ok(t, c.get(t, c.a.main+"/orders", s, http.Header{"Cookie": {cookieName + "=" + s.id}}))

	// A handle whose session ends after an upstream 401 (the forced refresh is rejected): 401,
	// and no Set-Cookie either, as for every other answer to a handle.
	ended := c.login(t, c.b.main, "carol", true)
	c.id.fault(t, `{"endpoint":"v1.refresh","reject":true,"times":1}`)
	h := ended.cred()
	h.Set("Content-Type", "application/json")
	r = c.send(t, "POST", c.b.main+"/once401/handle", h, "{}")
	apiError(t, r.status, r.body, http.StatusUnauthorized, "SESSION_EXPIRED")
	c.up.take()
	if sc := r.header.Values("Set-Cookie"); len(sc) != 0 {
		t.Errorf("a handle client got Set-Cookie %q after its session ended on an upstream 401", sc)
	}

	// Logout by handle; the handle is refused from then on, without a Set-Cookie.
	h = s.cred()
	h.Set("Content-Type", "application/json")
	r = c.send(t, "POST", c.b.main+"/.sitegate/logout", h, "")
	if r.status != http.StatusNoContent {
		t.Fatalf("logout by handle: %d %s", r.status, r.body)
	}
	r = c.get(t, c.a.main+"/orders", s, nil)
	c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	noCookie(t, r)
	if c.exists(t, "sitegate:", s.id) {
		t.Error("the session is still in Redis after logout")
	}
}

func (c *cluster) testCookieHygiene(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	s := c.login(t, c.a.main, "demo", false)

	r := c.send(t, "GET", c.b.main+"/orders", http.Header{
		"Cookie":         {"a=1; " + cookieName + "=" + s.id + "; " + cookieName + "-pref=x; b=2"},
		"X-Site-Context": {`{"account":"` + demoAccount + `","channel":99}`},
		"X-User-Id":      {"admin"},
	}, "")
	got := c.ok(t, r)
	if ck := got.header.Values("Cookie"); len(ck) != 1 || ck[0] != "a=1; "+cookieName+"-pref=x; b=2" {
		t.Errorf("the upstream got Cookie %q, want the other cookies only", ck)
	}
	if got.header.Get("X-Site-Context") != `{"account":"`+demoAccount+`"}` || got.header.Get("X-User-Id") != s.view.User.ID || got.bearer() != s.access {
		t.Errorf("upstream headers: %v", got.header)
	}
	for name, values := range got.header {
		if strings.Contains(strings.Join(values, " "), s.id) {
			t.Errorf("the session ID reached the upstream in %s", name)
		}
	}

	// The session cookie alone: no Cookie header upstream. Two Cookie lines: the other one stays.
	got = c.ok(t, c.get(t, c.a.main+"/orders", s, nil))
	if ck := got.header.Values("Cookie"); len(ck) != 0 {
		t.Errorf("the upstream got Cookie %q", ck)
	}
	got = c.ok(t, c.get(t, c.a.main+"/orders", s, http.Header{"Cookie": {"c=3"}}))
	if ck := strings.Join(got.header.Values("Cookie"), "; "); ck != "c=3" {
		t.Errorf("the upstream got Cookie %q, want c=3", ck)
	}

	// Two different session cookies are two credentials.
	other := c.login(t, c.a.main, "carol", false)
	r = c.send(t, "GET", c.a.main+"/orders", http.Header{"Cookie": {cookieName + "=" + s.id + "; " + cookieName + "=" + other.id}}, "")
	c.refused(t, r, http.StatusBadRequest, "INVALID_REQUEST")

	// The upstream cannot set sitegate's cookie; its other cookies pass.
	r = c.get(t, c.a.main+"/set-cookie", s, nil)
	c.ok(t, r)
	noCookie(t, r)
	if sc := r.header.Values("Set-Cookie"); len(sc) != 2 || setCookie(t, r.header, "other") == nil || setCookie(t, r.header, cookieName+"-pref") == nil {
		t.Errorf("the client got Set-Cookie %q, want other and %s-pref", sc, cookieName)
	}
	c.ok(t, c.get(t, c.a.main+"/orders", s, nil)) // the session is untouched
}

// concurrently sends n GETs with the session, alternating between the instances, all at once.
func (c *cluster) concurrently(n int, s *session, bases ...string) []resp {
	out := make([]resp, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = do("GET", fmt.Sprintf("%s/orders/%d", bases[i%len(bases)], i), s.cred(), "")
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// refreshOnce signs in at sites[0] with a token just outside the refresh window, waits until it
// is inside, then sends n requests at once across the sites: Identity must see exactly one
// refresh, and the upstream the same new token n times.
func (c *cluster) refreshOnce(t *testing.T, user, endpoint string, n int, sites ...string) *session {
	t.Helper()
	c.id.reset(t)
	c.up.take()
	s := c.loginNear(t, sites[0], user, refreshBefore+2*time.Second)
	old := c.ok(t, c.get(t, sites[0]+"/orders", s, nil)).bearer()
	if old != s.access {
		t.Fatalf("before the refresh window the upstream got another token")
	}
	c.id.fault(t, `{"endpoint":"`+endpoint+`","latency":"200ms"}`)
	before := c.calls(t, endpoint)
	sleepUntil(jwtExp(t, old).Add(-refreshBefore + 150*time.Millisecond))

	answers := c.concurrently(n, s, sites...)
	for i, r := range answers {
		checkAnswer(t, fmt.Sprintf("request %d", i), r)
		if r.status != http.StatusOK {
			t.Errorf("request %d: %d %s", i, r.status, r.body)
		}
	}
	calls := c.id.calls(t)
	if got := calls.Calls[endpoint] - before; got != 1 || calls.RefreshTokenReuse != 0 {
		t.Errorf("Identity saw %d %s calls and %d reuses, want exactly 1 and 0", got, endpoint, calls.RefreshTokenReuse)
	}
	reqs := c.up.take()
	if len(reqs) != n {
		t.Fatalf("the upstream got %d requests, want %d", len(reqs), n)
	}
	fresh := reqs[0].bearer()
	for i, r := range reqs {
		if r.bearer() != fresh {
			t.Errorf("upstream request %d (%s) carried another token than the others", i, r.path)
		}
	}
	if fresh == old || !c.id.wasIssued(fresh) || !jwtExp(t, fresh).After(jwtExp(t, old)) {
		t.Errorf("the upstream did not get a new token")
	}
	s.access = fresh
	return s
}

// calls returns one emulator counter.
func (c *cluster) calls(t *testing.T, endpoint string) int {
	t.Helper()
	return c.id.calls(t).Calls[endpoint]
}

func (c *cluster) testRefreshOnce(t *testing.T) {
	ok := c.sumMetric(t, `sitegate_session_refreshes_total{dialect="fabric_v1",result="ok"}`)
	coalesced := c.sumMetric(t, `sitegate_session_refreshes_total{dialect="fabric_v1",result="coalesced"}`)
	s := c.refreshOnce(t, "demo", "v1.refresh", 40, c.a.main, c.b.main)

	// Both instances go on with the new token, without refreshing again.
	for _, in := range []*instance{c.a, c.b} {
		if got := c.ok(t, c.get(t, in.main+"/orders", s, nil)).bearer(); got != s.access {
			t.Errorf("%s forwarded another token after the refresh", in.name)
		}
	}
	if n := c.calls(t, "v1.refresh"); n != 1 {
		t.Errorf("v1.refresh calls: %d, want 1", n)
	}
	if d := c.sumMetric(t, `sitegate_session_refreshes_total{dialect="fabric_v1",result="ok"}`) - ok; d != 1 {
		t.Errorf("refreshes_total{result=ok} rose by %v, want 1", d)
	}
	if d := c.sumMetric(t, `sitegate_session_refreshes_total{dialect="fabric_v1",result="coalesced"}`) - coalesced; d < 1 {
		t.Errorf("refreshes_total{result=coalesced} rose by %v, want the waiters counted", d)
	}
}

func (c *cluster) testECE(t *testing.T) {
	s := c.refreshOnce(t, "demo", "ece.refresh", 12, c.a.ece, c.b.ece)
	if s.view.Dialect != "ece" || s.view.User.ID != "demo" {
		t.Errorf("ECE login answer: %+v", s.view)
	}
	// The new token works at ECE; the session's cookie means nothing to the fabric v1 site, which
	// refuses it without deleting it.
	r := do("GET", c.id.url+"/api/v1/users/auth", http.Header{"Authorization": {"Bearer " + s.access}}, "")
	if r.status != http.StatusOK {
		t.Fatalf("ECE refuses the refreshed token: %d %s", r.status, r.body)
	}
	c.refused(t, c.get(t, c.a.main+"/orders", s, nil), http.StatusUnauthorized, "SESSION_EXPIRED")
	c.ok(t, c.get(t, c.b.ece+"/orders", s, nil))

	// Logout ends the ECE session at Identity too.
	h := s.cred()
	h.Set("Content-Type", "application/json")
	if r := c.send(t, "POST", c.b.ece+"/.sitegate/logout", h, ""); r.status != http.StatusNoContent {
		t.Fatalf("ECE logout: %d %s", r.status, r.body)
	}
	if n := c.calls(t, "ece.logout"); n != 1 {
		t.Errorf("ece.logout calls: %d, want 1", n)
	}
	r = do("GET", c.id.url+"/api/v1/users/auth", http.Header{"Authorization": {"Bearer " + s.access}}, "")
	if r.status != http.StatusUnauthorized {
		t.Errorf("ECE still accepts the token after logout: %d", r.status)
	}
	c.refused(t, c.get(t, c.a.ece+"/orders", s, nil), http.StatusUnauthorized, "SESSION_EXPIRED")
}

func (c *cluster) testIdentityDown(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	// The token is inside the refresh window from the start, and expires in about 3s.
	s := c.loginNear(t, c.a.main, "demo", 3*time.Second)
	exp := jwtExp(t, s.access)
	c.id.fault(t, `{"endpoint":"v1.refresh","status":503}`)

	// Still valid: forwarded with the current token; the failed refresh cools off.
	start := time.Now()
	for range 2 {
		if got := c.ok(t, c.get(t, c.a.main+"/orders", s, nil)).bearer(); got != s.access {
			t.Errorf("identity down, token valid: the upstream got another token")
		}
	}
	if n := c.calls(t, "v1.refresh"); n != 1 {
		t.Errorf("v1.refresh calls: %d, want 1 (then a cool-off)", n)
	}

	// Expired: 503 with Retry-After, never the expired token, and the session is kept.
	sleepUntil(exp.Add(100 * time.Millisecond))
	r := c.get(t, c.a.main+"/orders", s, nil)
	c.refused(t, r, http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE")
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	noCookie(t, r)
	// The other instance tries Identity itself; a dropped connection is unavailable too.
	c.id.clearFaults(t)
	c.id.fault(t, `{"endpoint":"v1.*","drop":true}`)
	r = c.get(t, c.b.main+"/orders", s, nil)
	c.refused(t, r, http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE")
	noCookie(t, r)
	if n := c.calls(t, "v1.refresh"); n != 2 {
		t.Errorf("v1.refresh calls: %d, want 2", n)
	}
	if !c.exists(t, "sitegate:", s.id) {
		t.Fatal("the session was deleted while Identity was down")
	}

	// A sign-in while Identity is down is a 503, not a refused password.
	r = c.send(t, "POST", c.b.main+"/.sitegate/login", jsonHeader, loginBody("carol", c.passwords["carol"], false))
	apiError(t, r.status, r.body, http.StatusServiceUnavailable, "IDENTITY_UNAVAILABLE")
	noCookie(t, r)

	// Identity is back: once the cool-off is over, the session refreshes and works everywhere.
	c.id.clearFaults(t)
	sleepUntil(start.Add(5*time.Second + 200*time.Millisecond))
	fresh := c.ok(t, c.get(t, c.a.main+"/orders", s, nil)).bearer()
	if fresh == s.access || !c.id.wasIssued(fresh) {
		t.Error("after Identity came back the upstream did not get a new token")
	}
	if got := c.ok(t, c.get(t, c.b.main+"/orders", s, nil)).bearer(); got != fresh {
		t.Error("the other instance forwarded another token")
	}
	if calls := c.id.calls(t); calls.Calls["v1.refresh"] != 3 || calls.RefreshTokenReuse != 0 {
		t.Errorf("calls after recovery: %+v", calls)
	}
}

func (c *cluster) testIdentitySlow(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	s := c.loginNear(t, c.a.main, "demo", 4*time.Second)
	c.id.fault(t, `{"endpoint":"v1.refresh","latency":"4s"}`)
	start := time.Now()
	got := c.ok(t, c.get(t, c.a.main+"/orders", s, nil))
	took := time.Since(start)
	if got.bearer() != s.access {
		t.Error("identity slow, token valid: the upstream got another token")
	}
	if took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("the request took %v; the identity timeout is 1s", took)
	}
	if n := c.calls(t, "v1.refresh"); n != 1 {
		t.Errorf("v1.refresh calls: %d, want 1", n)
	}
	if !c.exists(t, "sitegate:", s.id) {
		t.Error("the session was deleted after a slow Identity")
	}
}

func (c *cluster) testIdentityRejects(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	deleted := c.sumMetric(t, `sitegate_sessions_deleted_total{reason="rejected"}`)

	// A deactivated user, and a refresh token Identity refuses.
	dave := c.loginNear(t, c.a.main, "dave", 4*time.Second)
	demo := c.loginNear(t, c.a.main, "demo", 4*time.Second)
	c.id.setActive(t, "dave", false)
	defer c.id.setActive(t, "dave", true)
	c.id.fault(t, `{"endpoint":"v1.refresh","reject":true,"after":1,"times":1}`) // the second refresh: demo's

	for _, s := range []*session{dave, demo} {
		r := c.get(t, c.a.main+"/orders", s, nil)
		c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
		cookieCleared(t, r)
		if c.exists(t, "sitegate:", s.id) {
			t.Errorf("%s: the session is still in Redis after Identity refused it", s.view.User.Name)
		}
		for _, in := range []*instance{c.a, c.b} {
			r := c.get(t, in.main+"/orders", s, nil)
			c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
			cookieCleared(t, r)
		}
	}
	if n := c.calls(t, "v1.refresh"); n != 2 {
		t.Errorf("v1.refresh calls: %d, want 2", n)
	}
	if d := c.sumMetric(t, `sitegate_sessions_deleted_total{reason="rejected"}`) - deleted; d != 2 {
		t.Errorf("sessions_deleted_total{reason=rejected} rose by %v, want 2", d)
	}
}

func (c *cluster) testReplay(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	replays := metric(t, c.a.main, "sitegate_upstream_401_replays_total")
	s := c.login(t, c.a.main, "demo", false)
	post := func(in *instance, path, body string) resp {
		h := s.cred()
		h.Set("Content-Type", "application/json")
		return c.send(t, "POST", in.main+path, h, body)
	}

	body := `{"order":42,"lines":[{"sku":"A-1","qty":2}]}`
	r := post(c.a, "/once401/orders", body)
	if r.status != http.StatusOK || r.body != "upstream" {
		t.Fatalf("replayed request: %d %s", r.status, r.body)
	}
	reqs := c.up.take()
	if len(reqs) != 2 || reqs[0].path != "/once401/orders" || reqs[1].path != "/once401/orders" {
		t.Fatalf("the upstream got %d requests, want the request and its replay", len(reqs))
	}
	if reqs[0].bearer() != s.access || reqs[1].bearer() == s.access || !c.id.wasIssued(reqs[1].bearer()) {
		t.Error("the replay does not carry a new token")
	}
	for i, rq := range reqs {
		if rq.method != "POST" || rq.body != body || rq.header.Get("Content-Type") != "application/json" {
			t.Errorf("upstream request %d: %s %q %v", i, rq.method, rq.body, rq.header)
		}
	}
	if calls := c.id.calls(t); calls.Calls["v1.refresh"] != 1 || calls.RefreshTokenReuse != 0 {
		t.Errorf("calls: %+v, want one refresh", calls)
	}
	if d := metric(t, c.a.main, "sitegate_upstream_401_replays_total") - replays; d != 1 {
		t.Errorf("upstream_401_replays_total rose by %v, want 1", d)
	}
	fresh := reqs[1].bearer()

	// A second 401 within the minute: no forced refresh, the upstream's answer stands.
	r = post(c.a, "/once401/again", body)
	if r.status != http.StatusUnauthorized || r.body != "upstream refused" {
		t.Errorf("second upstream 401: %d %s, want the upstream's own answer", r.status, r.body)
	}
	noCookie(t, r)
	if reqs := c.up.take(); len(reqs) != 1 || reqs[0].bearer() != fresh {
		t.Errorf("the upstream got %d requests, want 1 with the current token", len(reqs))
	}
	if n := c.calls(t, "v1.refresh"); n != 1 {
		t.Errorf("v1.refresh calls: %d, want still 1", n)
	}

	// A body too large to buffer is streamed, and not replayed.
	big := c.login(t, c.a.main, "carol", false)
	large := `{"pad":"` + strings.Repeat("x", 70<<10) + `"}`
	h := big.cred()
	h.Set("Content-Type", "application/json")
	r = c.send(t, "POST", c.a.main+"/once401/large", h, large)
	if r.status != http.StatusUnauthorized || r.body != "upstream refused" {
		t.Errorf("large body: %d %.100s", r.status, r.body)
	}
	if reqs := c.up.take(); len(reqs) != 1 || reqs[0].body != large {
		t.Errorf("large body: the upstream got %d requests, or the body changed", len(reqs))
	}
	if n := c.calls(t, "v1.refresh"); n != 1 {
		t.Errorf("v1.refresh calls: %d, want still 1", n)
	}
	c.ok(t, c.get(t, c.b.main+"/orders", s, nil))
}

func (c *cluster) testLogout(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	logouts := metric(t, c.a.main, `sitegate_sessions_deleted_total{reason="logout"}`)
	s := c.login(t, c.a.main, "demo", false)
	c.ok(t, c.get(t, c.b.main+"/orders", s, nil))

	h := s.cred()
	h.Set("Content-Type", "application/json")
	h.Set("Origin", c.a.main)
	r := c.send(t, "POST", c.a.main+"/.sitegate/logout", h, "")
	if r.status != http.StatusNoContent {
		t.Fatalf("logout: %d %s", r.status, r.body)
	}
	cookieCleared(t, r)
	r = c.get(t, c.b.main+"/orders", s, nil)
	c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
	c.refused(t, c.get(t, c.b.main+"/.sitegate/session", s, nil), http.StatusUnauthorized, "SESSION_EXPIRED")
	if c.exists(t, "sitegate:", s.id) {
		t.Error("the session is still in Redis after logout")
	}
	if d := metric(t, c.a.main, `sitegate_sessions_deleted_total{reason="logout"}`) - logouts; d != 1 {
		t.Errorf("sessions_deleted_total{reason=logout} rose by %v, want 1", d)
	}
}

// flip changes one character of a session ID, within the base64url alphabet.
func flip(id string) string {
	b := []byte(id)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func (c *cluster) testTampering(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	ctx := context.Background()
	s := c.login(t, c.a.main, "demo", false)

	for _, id := range []string{flip(s.id), s.id[:len(s.id)-1], s.id + "A", strings.ToUpper(s.id)} {
		r := c.get(t, c.b.main+"/orders", &session{id: id}, nil)
		c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
		cookieCleared(t, r)
	}
	c.ok(t, c.get(t, c.b.main+"/orders", s, nil))

	// Session A's record copied over session B's key: B's ID does not open A's tokens.
	a, b := s, c.login(t, c.a.main, "carol", false)
	if got := c.ok(t, c.get(t, c.a.main+"/orders", b, nil)); got.header.Get("X-User-Id") != b.view.User.ID {
		t.Fatalf("before the swap B is carol: %v", got.header)
	}
	raw, err := c.rdb.Get(ctx, redisKey("sitegate:", a.id)).Bytes()
	if err != nil {
		t.Fatalf("reading A's record: %v", err)
	}
	if err := c.rdb.SetArgs(ctx, redisKey("sitegate:", b.id), raw, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
		t.Fatal(err)
	}
	for _, in := range []*instance{c.a, c.b} {
		r := c.get(t, in.main+"/orders", b, nil)
		c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
		r = c.get(t, in.main+"/.sitegate/session", b, nil)
		c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
		if strings.Contains(r.body, a.view.User.ID) {
			t.Errorf("B was described as A: %s", r.body)
		}
	}
	if got := c.ok(t, c.get(t, c.b.main+"/orders", a, nil)); got.header.Get("X-User-Id") != a.view.User.ID || got.bearer() != a.access {
		t.Errorf("A after the swap: %v", got.header)
	}

	// One flipped bit in the middle of A's record (the sealed tokens are most of it): refused
	// too, never served with a broken token.
	mangled := []byte(string(raw))
	mangled[len(mangled)/2] ^= 1
	if err := c.rdb.SetArgs(ctx, redisKey("sitegate:", a.id), mangled, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
		t.Fatal(err)
	}
	for _, in := range []*instance{c.a, c.b} {
		c.refused(t, c.get(t, in.main+"/orders", a, nil), http.StatusUnauthorized, "SESSION_EXPIRED")
	}

	// B's own record with A's user id written over its own: B must not be served as A. The user
	// id is one of the record's fields outside the sealed tokens; unless they are authenticated
	// too, anyone who can write to Redis picks the identity headers of any session.
	t.Run("identity fields edited in Redis", func(t *testing.T) {
		b := c.login(t, c.a.main, "carol", false)
		raw, err := c.rdb.Get(ctx, redisKey("sitegate:", b.id)).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(string(raw), b.view.User.ID)
		if i < 0 || len(a.view.User.ID) != len(b.view.User.ID) {
			t.Skip("the user id is not stored in plaintext: nothing to edit")
		}
		edited := []byte(string(raw))
		copy(edited[i:], a.view.User.ID)
		if err := c.rdb.SetArgs(ctx, redisKey("sitegate:", b.id), edited, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
			t.Fatal(err)
		}
		r := c.get(t, c.b.main+"/orders", b, nil)
		if got := c.up.take(); r.status == http.StatusOK && len(got) == 1 {
			t.Errorf("an edited record was served: the upstream got X-User-Id %q (A's: %v) with B's bearer (%v)",
				got[0].header.Get("X-User-Id"), got[0].header.Get("X-User-Id") == a.view.User.ID, got[0].bearer() != a.access)
		} else {
			c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
		}
		if r := c.get(t, c.b.main+"/.sitegate/session", b, nil); strings.Contains(r.body, a.view.User.ID) {
			t.Errorf("the session endpoint describes B as A: %d %s", r.status, r.body)
		}
	})
}

func (c *cluster) testTimeouts(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	start := time.Now()
	idle := c.login(t, c.a.short, "demo", false)
	life := c.login(t, c.b.short, "carol", false)
	for _, s := range []*session{idle, life} {
		if d := time.Until(s.view.ExpiresAt); d < 2*time.Second || d > 4*time.Second {
			t.Errorf("expires_at is %v away, want the 4s lifetime", d)
		}
		if d := time.Until(s.view.IdleExpiresAt); d < 0 || d > 2*time.Second {
			t.Errorf("idle_expires_at is %v away, want the 2s idle timeout", d)
		}
		if ttl := c.rdb.PTTL(context.Background(), redisKey("sgshort:", s.id)).Val(); ttl <= 0 || ttl > 2*time.Second {
			t.Errorf("Redis TTL %v, want at most the idle timeout", ttl)
		}
	}
	c.ok(t, c.get(t, c.a.short+"/orders", idle, nil))

	// life stays active across both instances; idle does nothing.
	for i := 0; time.Since(start) < 3400*time.Millisecond; i++ {
		in := []*instance{c.a, c.b}[i%2]
		c.ok(t, c.get(t, in.short+"/orders", life, nil))
		time.Sleep(400 * time.Millisecond)
	}
	r := c.get(t, c.b.short+"/orders", idle, nil)
	c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
	if c.exists(t, "sgshort:", idle.id) {
		t.Error("the idle session is still in Redis")
	}

	// Past the absolute lifetime, activity does not help.
	c.ok(t, c.get(t, c.a.short+"/orders", life, nil))
	sleepUntil(start.Add(4400 * time.Millisecond))
	r = c.get(t, c.a.short+"/orders", life, nil)
	c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
	cookieCleared(t, r)
}

// secrets is everything that must never be readable in Redis, the logs or the metrics.
func (c *cluster) secrets() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]string{c.apiKey, c.sessionKey}, c.ids...)
	for _, pw := range c.passwords {
		out = append(out, pw)
	}
	return append(out, c.id.tokens()...)
}

func (c *cluster) testRedisAtRest(t *testing.T) {
	ctx := context.Background()
	secrets := c.secrets()
	if len(c.id.tokens()) < 20 || len(c.ids) < 20 {
		t.Fatalf("only %d tokens and %d session IDs to look for; the scan would prove little", len(c.id.tokens()), len(c.ids))
	}
	keys, values := 0, 0
	iter := c.rdb.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		keys++
		var text string
		switch typ := c.rdb.Type(ctx, key).Val(); typ {
		case "string":
			v, err := c.rdb.Get(ctx, key).Result()
			if err == redis.Nil {
				continue // expired meanwhile
			}
			if err != nil {
				t.Fatal(err)
			}
			text, values = v, values+1
		case "none":
			continue
		default:
			t.Errorf("unexpected %s key %q", typ, key)
		}
		for _, s := range secrets {
			if strings.Contains(key, s) || strings.Contains(text, s) {
				t.Errorf("Redis key %q holds a secret (%.12s…)", key, s)
			}
		}
		if strings.Contains(text, "eyJhbGci") { // the start of any JWT the emulator issues

			t.Errorf("Redis key %q holds something like a JWT", key)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if keys < 5 || values < 5 {
		t.Fatalf("scanned %d keys and %d values; the scan would prove nothing", keys, values)
	}
}

func (c *cluster) testRedisOutage(t *testing.T) {
	c.id.reset(t)
	c.up.take()
	s := c.login(t, c.a.main, "demo", false)
	c.ok(t, c.get(t, c.b.main+"/orders", s, nil))
	// A logout attempted during the outage: its DEL may reach Redis once it is back (a
	// timed-out write is not an undone one), so it uses a session of its own.
	leaving := c.login(t, c.a.main, "carol", false)

	t.Run("paused: 503, nothing deleted, the same session afterwards", func(t *testing.T) {
		c.redis.Pause()
		paused := true
		defer func() {
			if paused {
				c.redis.Resume()
			}
		}()
		for _, in := range []*instance{c.a, c.b} {
			r := c.get(t, in.main+"/orders", s, nil)
			c.refused(t, r, http.StatusServiceUnavailable, "SESSION_STORE_UNAVAILABLE")
			noCookie(t, r)
			r = c.send(t, "GET", in.main+"/.sitegate/healthz", nil, "")
			apiError(t, r.status, r.body, http.StatusServiceUnavailable, "SESSION_STORE_UNAVAILABLE")
		}
		r := c.send(t, "POST", c.a.main+"/.sitegate/login", jsonHeader, loginBody("carol", c.passwords["carol"], false))
		apiError(t, r.status, r.body, http.StatusServiceUnavailable, "SESSION_STORE_UNAVAILABLE")
		noCookie(t, r)
		h := leaving.cred()
		h.Set("Content-Type", "application/json")
		r = c.send(t, "POST", c.b.main+"/.sitegate/logout", h, "")
		apiError(t, r.status, r.body, http.StatusServiceUnavailable, "SESSION_STORE_UNAVAILABLE")
		noCookie(t, r) // the cookie stays, so that the user can log out again

		c.redis.Resume()
		paused = false
		for _, in := range []*instance{c.b, c.a} {
			if got := c.ok(t, c.get(t, in.main+"/orders", s, nil)); got.bearer() != s.access {
				t.Errorf("%s: after Redis came back the session forwards another token", in.name)
			}
			if r := c.send(t, "GET", in.main+"/.sitegate/healthz", nil, ""); r.status != http.StatusOK {
				t.Errorf("%s healthz after Redis came back: %d", in.name, r.status)
			}
		}
	})

	t.Run("paused during a refresh: the rotated tokens are kept", func(t *testing.T) {
		c.id.reset(t)
		c.up.take()
		s := c.loginNear(t, c.a.main, "demo", 4*time.Second)
		saveErrors := metric(t, c.a.main, `sitegate_session_store_errors_total{op="save"}`)
		c.id.fault(t, `{"endpoint":"v1.refresh","latency":"600ms"}`)
		done := make(chan resp, 1)
		go func() { done <- do("GET", c.a.main+"/orders/during-pause", s.cred(), "") }()
		// Once Identity has the call, sitegate holds the lock and has read the session.
		for deadline := time.Now().Add(5 * time.Second); c.calls(t, "v1.refresh") == 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the refresh never reached Identity")
			}
		}
		c.redis.Pause()
		time.Sleep(1200 * time.Millisecond) // Identity has answered; the save fails
		c.redis.Resume()
		var r resp
		select {
		case r = <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("the request never finished")
		}
		checkAnswer(t, "request during the pause", r)
		if r.status != http.StatusOK {
			t.Fatalf("request during the pause: %d %s", r.status, r.body)
		}
		if metric(t, c.a.main, `sitegate_session_store_errors_total{op="save"}`) == saveErrors {
			t.Error("no save failed: the pause missed the refresh, so the test proves nothing")
		}
		reqs := c.up.take()
		if len(reqs) != 1 {
			t.Fatalf("the upstream got %d requests, want 1", len(reqs))
		}
		fresh := reqs[0].bearer()
		if fresh == s.access {
			t.Fatal("the request was not forwarded with the refreshed token")
		}
		if got := c.ok(t, c.get(t, c.b.main+"/orders", s, nil)).bearer(); got != fresh {
			t.Error("the other instance does not see the refreshed token: it was not saved")
		}
		// The stored refresh token is the rotated one: a forced refresh on the other instance works.
		h := s.cred()
		h.Set("Content-Type", "application/json")
		r = c.send(t, "POST", c.b.main+"/once401/after-pause", h, "{}")
		if r.status != http.StatusOK {
			t.Errorf("refresh after the pause: %d %s", r.status, r.body)
		}
		c.up.take()
		if calls := c.id.calls(t); calls.Calls["v1.refresh"] != 2 || calls.RefreshTokenReuse != 0 {
			t.Errorf("calls: %+v, want two refreshes and no reuse", calls)
		}
	})

	t.Run("stopped, then restarted empty: 503, then 401, then sign-in works", func(t *testing.T) {
		c.redis.Stop()
		stopped := true
		defer func() {
			if stopped {
				c.redis.Restart()
			}
		}()
		for _, in := range []*instance{c.a, c.b} {
			c.refused(t, c.get(t, in.main+"/orders", s, nil), http.StatusServiceUnavailable, "SESSION_STORE_UNAVAILABLE")
		}
		c.redis.Restart()
		stopped = false
		for _, in := range []*instance{c.a, c.b} {
			var r resp
			for deadline := time.Now().Add(5 * time.Second); ; {
				if r = c.get(t, in.main+"/orders", s, nil); r.status != http.StatusServiceUnavailable || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			c.refused(t, r, http.StatusUnauthorized, "SESSION_EXPIRED")
			cookieCleared(t, r)
		}
		again := c.login(t, c.b.main, "demo", false)
		c.ok(t, c.get(t, c.a.main+"/orders", again, nil))
	})
}

func (c *cluster) testNoSecretsInLogs(t *testing.T) {
	secrets := c.secrets()
	for _, in := range []*instance{c.a, c.b} {
		r := do("GET", in.main+"/metrics", nil, "")
		if r.status != http.StatusOK {
			t.Fatalf("metrics: %d", r.status)
		}
		for _, want := range []string{
			`sitegate_session_refreshes_total{dialect="fabric_v1",result="ok"}`,
			`sitegate_sessions_created_total{dialect="fabric_v1"}`,
			`sitegate_session_store_errors_total{op="load"}`,
		} {
			if !strings.Contains(r.body, want) {
				t.Errorf("%s metrics lack %s", in.name, want)
			}
		}
		logs := readLogs(t, in.log)
		for _, s := range secrets {
			if strings.Contains(r.body, s) {
				t.Errorf("%s metrics hold a secret (%.12s…)", in.name, s)
			}
			if strings.Contains(logs, s) {
				t.Errorf("%s logs hold a secret (%.12s…)", in.name, s)
			}
		}
		for _, word := range []string{"panic", "DATA RACE"} {
			if strings.Contains(logs, word) {
				t.Errorf("%s logs mention %q", in.name, word)
			}
		}
	}
}
