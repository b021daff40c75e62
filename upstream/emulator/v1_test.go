package emulator

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// v1Do sends a well-behaved v1 request (site context and API key) to path under the v1 prefix.
func v1Do(t *testing.T, base, method, path string, body any) response {
	t.Helper()
	return call{method: method, path: v1Prefix + path, header: v1Header(), body: body}.do(t, base)
}

// v1LoginAs logs in and returns the SignInResponse.
func v1LoginAs(t *testing.T, base, username, password string) map[string]any {
	t.Helper()
	return v1Do(t, base, "POST", "/auth/local/login", map[string]string{"username": username, "password": password}).
		want(t, http.StatusOK).object(t)
}

// v1Register creates a local user with password username+"-pw" and returns the SignInResponse.
func v1Register(t *testing.T, base, username string) map[string]any {
	t.Helper()
	body := map[string]any{
		"user":     map[string]any{"name": map[string]string{"first": "Ada", "middle": "B", "last": "Lovelace"}, "email": username + "@example.com"},
		"provider": map[string]string{"username": username, "password": username + "-pw"},
	}
	return v1Do(t, base, "POST", "/user/local", body).want(t, http.StatusOK).object(t)
}

// v1RefreshWith presents refreshToken and returns the response.
func v1RefreshWith(t *testing.T, base string, refreshToken any) response {
	t.Helper()
	return v1Do(t, base, "POST", "/auth/local/refresh", map[string]any{"refreshToken": refreshToken})
}

// v1Claims decodes a JWT's payload without verifying it, as a client would.
func v1Claims(t *testing.T, raw any) map[string]any {
	t.Helper()
	s, _ := raw.(string)
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", s)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	return claims
}

// v1PatchUser changes a user through the control API ({"active": false} deactivates).
func v1PatchUser(t *testing.T, base, username string, body any) {
	t.Helper()
	call{method: "PATCH", path: ControlPrefix + "users/" + username, body: body}.do(t, base).want(t, http.StatusOK)
}

// v1Array decodes a JSON array body.
func (r response) v1Array(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("body is not a JSON array of objects: %v: %s", err, r.body)
	}
	return out
}

// wantV1BadRequest fails unless the response is a 400 BAD_REQUEST whose message contains part.
func (r response) wantV1BadRequest(t *testing.T, part string) {
	t.Helper()
	r.wantError(t, http.StatusBadRequest, "BAD_REQUEST")
	if msg, _ := r.object(t)["message"].(string); !strings.Contains(msg, part) {
		t.Fatalf("message %q does not mention %q", msg, part)
	}
}

var (
	v1Hex24 = regexp.MustCompile(`^[0-9a-f]{24}$`)
	v1Hex32 = regexp.MustCompile(`^[0-9a-f]{32}$`)
	// v1Stamp is the seeds' timestamp format: RFC 3339, UTC, milliseconds.
	v1Stamp = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
)

func TestV1Routes(t *testing.T) {
	e, _ := newServer(t, testConfig())
	want := []string{
		"v1.change_password", "v1.create_address", "v1.create_guest_user", "v1.create_local_user",
		"v1.delete_address", "v1.get_address", "v1.get_user", "v1.list_addresses", "v1.login",
		"v1.refresh", "v1.reset", "v1.set_default_address", "v1.unset_default_address",
		"v1.update_address", "v1.update_password", "v1.update_username",
	}
	var got []string
	for _, n := range e.Endpoints() {
		if strings.HasPrefix(n, "v1.") {
			got = append(got, n)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("v1 endpoints %v, want %v", got, want)
	}
}

func TestV1Login(t *testing.T) {
	e, base := newServer(t, testConfig())
	before := e.now()
	si := v1LoginAs(t, base, "pat", "pat-password")

	pat := e.userByName("pat")
	for field, want := range map[string]any{
		"userId": pat.id, "roles": "customer", "name": "Pat Kake", "account": testAccount, "userType": "customer",
	} {
		if si[field] != want {
			t.Errorf("%s = %v, want %v", field, si[field], want)
		}
	}
	if id, _ := si["_id"].(string); !v1Hex32.MatchString(id) {
		t.Errorf("_id %q is not 32 hex characters", id)
	}
	if again := v1LoginAs(t, base, "PAT", "pat-password"); again["_id"] == si["_id"] || again["accessToken"] == si["accessToken"] {
		t.Errorf("a second login (username case-insensitive) repeated the _id or the access token")
	}

	at := v1Claims(t, si["accessToken"])
	for claim, want := range map[string]any{
		"id": pat.id, "accountid": testAccount, "issuer": "emulator",
		"roles":       []any{map[string]any{"id": stableID(24, "role", "customer")}},
		"permissions": []any{},
		"userType":    map[string]any{"kind": "REGISTERED"},
	} {
		if fmt.Sprint(at[claim]) != fmt.Sprint(want) {
			t.Errorf("access token %s = %v, want %v", claim, at[claim], want)
		}
	}
	if v, ok := at["accountId"]; !ok || v != nil {
		t.Errorf("access token accountId = %v (present %v), want null", v, ok)
	}
	if iat, exp := at["iat"].(float64), at["exp"].(float64); exp-iat != 1800 || iat < float64(before.Unix()) {
		t.Errorf("access token iat %v exp %v, want a 30-minute token issued now", iat, exp)
	}
	rt := v1Claims(t, si["refreshToken"])
	if rt["id"] != pat.id || rt["exp"].(float64)-rt["iat"].(float64) != 45*24*3600 {
		t.Errorf("refresh token claims %v, want id %s and a 45-day life", rt, pat.id)
	}
	if _, ok := rt["roles"]; ok {
		t.Errorf("refresh token carries roles: %v", rt)
	}

	otherTenant := strings.Replace(testSite, testAccount, "aaaaaaaaaaaaaaaaaaaaaaaa", 1)
	for _, tc := range []struct {
		name   string
		header http.Header
		body   any
		status int
		code   string
	}{
		{"missing username", v1Header(), `{"password":"pat-password"}`, 400, "BAD_REQUEST"},
		{"missing password", v1Header(), `{"username":"pat"}`, 400, "BAD_REQUEST"},
		{"wrong password", v1Header(), `{"username":"pat","password":"nope"}`, 400, "LOCAL_AUTH_FAILED"},
		{"unknown user", v1Header(), `{"username":"nobody","password":"pat-password"}`, 400, "LOCAL_AUTH_FAILED"},
		{"deactivated", v1Header(), `{"username":"gone","password":"gone-password"}`, 401, "USER_DEACTIVATED_ERROR"},
		{"deactivated, wrong password", v1Header(), `{"username":"gone","password":"nope"}`, 400, "LOCAL_AUTH_FAILED"},
		{"other tenant", with(v1Header(), "X-Site-Context", otherTenant), `{"username":"pat","password":"pat-password"}`, 400, "LOCAL_AUTH_FAILED"},
		{"other tenant, deactivated", with(v1Header(), "X-Site-Context", otherTenant), `{"username":"gone","password":"gone-password"}`, 400, "LOCAL_AUTH_FAILED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := call{method: "POST", path: v1Prefix + "/auth/local/login", header: tc.header, body: tc.body}.do(t, base)
			r.wantError(t, tc.status, tc.code)
		})
	}
	v1Do(t, base, "POST", "/auth/local/login", `{"password":"x"}`).wantV1BadRequest(t, "username is required")
	v1Do(t, base, "POST", "/auth/local/login", `{"username":"pat"}`).wantV1BadRequest(t, "password is required")
}

// TestV1Headers covers x-api-key and x-site-context, which every v1 endpoint checks in that
// order and before the body.
func TestV1Headers(t *testing.T) {
	_, base := newServer(t, testConfig())
	login := `{"username":"pat","password":"pat-password"}`
	site := func(v string) http.Header { return with(v1Header(), "X-Site-Context", v) }
	noKey := v1Header()
	noKey.Del("X-Api-Key")
	noSite := v1Header()
	noSite.Del("X-Site-Context")

	for _, path := range []string{"/auth/local/login", "/auth/local/refresh"} {
		for _, tc := range []struct {
			name   string
			header http.Header
			body   string
			status int
			code   string
			part   string // in the message
		}{
			{"missing API key", noKey, login, 401, "API_KEY_MISSING", "x-api-key"},
			{"wrong API key", with(v1Header(), "X-Api-Key", "test-api-kez"), login, 401, "API_KEY_INVALID", "x-api-key"},
			{"API key before site context", with(noKey, "X-Site-Context", "nope"), login, 401, "API_KEY_MISSING", "x-api-key"},
			{"missing site context", noSite, login, 400, "BAD_REQUEST", "x-site-context"},
			{"site context not JSON", site("account=" + testAccount), login, 400, "BAD_REQUEST", "JSON object"},
			{"site context not an object", site(`["` + testAccount + `"]`), login, 400, "BAD_REQUEST", "JSON object"},
			{"site context null", site(`null`), login, 400, "BAD_REQUEST", "JSON object"},
			{"account missing", site(`{"channel":12}`), login, 400, "BAD_REQUEST", "account"},
			{"account of 23 characters", site(`{"account":"5f689caa4216e7000750d1e"}`), login, 400, "BAD_REQUEST", "24-character"},
			{"account not a string", site(`{"account":5}`), login, 400, "BAD_REQUEST", "account"},
			{"channel abc", site(`{"account":"` + testAccount + `","channel":"abc"}`), login, 400, "BAD_REQUEST", "channel"},
			{"date yesterday", site(`{"account":"` + testAccount + `","date":"yesterday"}`), login, 400, "BAD_REQUEST", "date"},
			{"site context before body", site("nope"), "{", 400, "BAD_REQUEST", "x-site-context"},
		} {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				r := call{method: "POST", path: v1Prefix + path, header: tc.header, body: tc.body}.do(t, base)
				r.wantError(t, tc.status, tc.code)
				if msg := r.object(t)["message"].(string); !strings.Contains(msg, tc.part) {
					t.Fatalf("message %q does not mention %q", msg, tc.part)
				}
			})
		}
	}

	for name, sc := range map[string]string{
		"date only":              `{"account":"` + testAccount + `","date":"2021-06-21"}`,
		"full date":              `{"account":"` + testAccount + `","date":"2023-01-01T00:00:00.000Z"}`,
		"numeric string channel": `{"account":"` + testAccount + `","channel":"1"}`,
		"unknown keys":           `{"account":"` + testAccount + `","site":"fabric.inc","stage":"stg02"}`,
	} {
		t.Run("accepted/"+name, func(t *testing.T) {
			call{method: "POST", path: v1Prefix + "/auth/local/login", header: site(sc), body: login}.do(t, base).want(t, http.StatusOK)
		})
	}

	t.Run("no API key configured", func(t *testing.T) {
		cfg := testConfig()
		cfg.APIKey = ""
		_, open := newServer(t, cfg)
		call{method: "POST", path: v1Prefix + "/auth/local/login", header: noKey, body: login}.do(t, open).want(t, http.StatusOK)
		call{method: "POST", path: v1Prefix + "/auth/local/login", header: noSite, body: login}.do(t, open).wantError(t, 400, "BAD_REQUEST")
	})
}

// TestV1BadBodies sends malformed bodies to every v1 endpoint that takes one: always a 400 with
// a precise message, checked before any user or token lookup.
func TestV1BadBodies(t *testing.T) {
	_, base := newServer(t, testConfig())
	for _, ep := range []struct {
		method, path string
		wrongType    string // a body with a field of the wrong type
		typeField    string // that field, as the message names it
		empty        string // the message for {}, "" when {} is valid
	}{
		{"POST", "/auth/local/login", `{"username":5,"password":"x"}`, "username", "username is required"},
		{"POST", "/auth/local/refresh", `{"refreshToken":["x"]}`, "refreshToken", "refreshToken is required"},
		{"PATCH", "/auth/local/reset", `{"username":true}`, "username", "username is required"},
		{"PATCH", "/auth/password", `{"userId":1,"resetToken":"x","newPassword":"y"}`, "userId", "userId is required"},
		{"PATCH", "/auth/change-password", `{"userId":"u","newPassword":{}}`, "newPassword", "userId is required"},
		{"POST", "/user/local", `{"provider":{"username":5}}`, "provider.username", "provider.username is required"},
		{"POST", "/user/guest", `{"user":{"email":5}}`, "user.email", ""},
		{"PATCH", "/user/nobody/username", `{"oldUsername":12345,"newUsername":"abcdef"}`, "oldUsername", "oldUsername must be 5 to 40"},
		{"POST", "/user/nobody/address", `{"address1":1}`, "address1", "address1 is required"},
		{"PUT", "/user/nobody/address/none", `{"city":[]}`, "city", "address1 is required"},
	} {
		for _, tc := range []struct {
			name, body, part string
			header           http.Header
		}{
			{"malformed JSON", `{"username":`, "malformed JSON", nil},
			{"syntax error", `{"a" 1}`, "malformed JSON at offset", nil},
			{"empty body", "", "request body is empty", nil},
			{"array", `[]`, "must be a JSON object", nil},
			{"string", `"x"`, "must be a JSON object", nil},
			{"trailing data", `{} {}`, "single JSON object", nil},
			{"wrong field type", ep.wrongType, fmt.Sprintf("field %q must be of type", ep.typeField), nil},
			{"wrong content type", `{}`, "Content-Type", with(v1Header(), "Content-Type", "text/plain")},
			{"too large", `{"x":"` + strings.Repeat("a", maxBody) + `"}`, "larger than", nil},
		} {
			t.Run(ep.path+"/"+tc.name, func(t *testing.T) {
				h := tc.header
				if h == nil {
					h = v1Header()
				}
				call{method: ep.method, path: v1Prefix + ep.path, header: h, body: tc.body}.do(t, base).wantV1BadRequest(t, tc.part)
			})
		}
		if ep.empty != "" {
			t.Run(ep.path+"/missing fields", func(t *testing.T) {
				v1Do(t, base, ep.method, ep.path, `{}`).wantV1BadRequest(t, ep.empty)
				v1Do(t, base, ep.method, ep.path, `null`).wantV1BadRequest(t, ep.empty)
			})
		}
	}
}

func TestV1Refresh(t *testing.T) {
	e, base := newServer(t, testConfig())
	si := v1LoginAs(t, base, "pat", "pat-password")
	first := si["refreshToken"]
	origExp := v1Claims(t, first)["exp"]

	// An hour later, refresh: new tokens, the refresh token keeps the original expiry.
	setClock(t, base, "1h")
	next := v1RefreshWith(t, base, first).want(t, http.StatusOK).object(t)
	if next["accessToken"] == si["accessToken"] || next["refreshToken"] == first {
		t.Fatalf("refresh did not rotate: %v", next)
	}
	if got := v1Claims(t, next["refreshToken"])["exp"]; got != origExp {
		t.Errorf("rotated refresh token exp %v, want the original %v", got, origExp)
	}
	if at := v1Claims(t, next["accessToken"]); at["exp"].(float64)-float64(e.now().Unix()) > 1800 || at["id"] != si["userId"] {
		t.Errorf("new access token %v: want a 30-minute token for %v", at, si["userId"])
	}
	assertShape(t, "refresh", any(next), any(si))

	// The new refresh token works; the old one is now reuse.
	third := v1RefreshWith(t, base, next["refreshToken"]).want(t, http.StatusOK).object(t)
	if calls(t, base).RefreshTokenReuse != 0 {
		t.Fatalf("reuse counted before any reuse")
	}
	v1RefreshWith(t, base, first).wantError(t, http.StatusBadRequest, "LOCAL_AUTH_FAILED")
	if got := calls(t, base).RefreshTokenReuse; got != 1 {
		t.Errorf("RefreshTokenReuse = %d, want 1", got)
	}

	// An unexpired access token is accepted in place of a refresh token.
	v1RefreshWith(t, base, third["accessToken"]).want(t, http.StatusOK)

	for name, tok := range map[string]any{
		"garbage":          "not-a-token",
		"tampered":         third["refreshToken"].(string) + "x",
		"unsigned":         "eyJhbGciOiJub25lIn0.eyJpZCI6IngifQ.",
		"foreign JWT":      "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4In0.c2lnbmF0dXJl",
		"reset token":      v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"pat"}`).want(t, 200).object(t)["token"],
		"whitespace token": "   ",
	} {
		t.Run(name, func(t *testing.T) {
			r := v1RefreshWith(t, base, tok)
			if name == "whitespace token" {
				r.wantV1BadRequest(t, "refreshToken is required")
				return
			}
			r.wantError(t, http.StatusBadRequest, "LOCAL_AUTH_FAILED")
		})
	}

	t.Run("other tenant does not use the token up", func(t *testing.T) {
		rt := v1LoginAs(t, base, "pat", "pat-password")["refreshToken"]
		other := with(v1Header(), "X-Site-Context", `{"account":"bbbbbbbbbbbbbbbbbbbbbbbb"}`)
		call{method: "POST", path: v1Prefix + "/auth/local/refresh", header: other, body: map[string]any{"refreshToken": rt}}.
			do(t, base).wantError(t, http.StatusBadRequest, "LOCAL_AUTH_FAILED")
		v1RefreshWith(t, base, rt).want(t, http.StatusOK)
	})

	t.Run("expired", func(t *testing.T) {
		rt := v1LoginAs(t, base, "pat", "pat-password")["refreshToken"]
		setClock(t, base, "1082h") // 45 days and 2 hours: past the expiry of a token minted at +1h
		v1RefreshWith(t, base, rt).wantError(t, http.StatusBadRequest, "LOCAL_AUTH_FAILED")
		setClock(t, base, "0s")
	})

	t.Run("deactivated", func(t *testing.T) {
		rt := v1LoginAs(t, base, "pat", "pat-password")["refreshToken"]
		v1PatchUser(t, base, "pat", map[string]any{"active": false})
		v1RefreshWith(t, base, rt).wantError(t, http.StatusUnauthorized, "USER_DEACTIVATED_ERROR")
		v1PatchUser(t, base, "pat", map[string]any{"active": true})
		v1RefreshWith(t, base, rt).want(t, http.StatusOK)
	})
}

func TestV1RefreshWithoutRotation(t *testing.T) {
	cfg := testConfig()
	cfg.KeepRefreshTokens = true
	_, base := newServer(t, cfg)
	si := v1LoginAs(t, base, "pat", "pat-password")
	for range 3 {
		r := v1RefreshWith(t, base, si["refreshToken"]).want(t, http.StatusOK).object(t)
		if r["refreshToken"] != si["refreshToken"] {
			t.Fatalf("refresh token changed without rotation")
		}
		if r["accessToken"] == si["accessToken"] {
			t.Fatalf("access token not renewed")
		}
	}
	if got := calls(t, base).RefreshTokenReuse; got != 0 {
		t.Errorf("RefreshTokenReuse = %d without rotation, want 0", got)
	}
}

// TestV1RefreshRace presents one refresh token many times at once: under rotation exactly one
// exchange succeeds.
func TestV1RefreshRace(t *testing.T) {
	_, base := newServer(t, testConfig())
	rt := v1LoginAs(t, base, "pat", "pat-password")["refreshToken"]
	const n = 8
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { statuses[i] = v1RefreshWith(t, base, rt).status })
	}
	wg.Wait()
	slices.Sort(statuses)
	if statuses[0] != http.StatusOK || statuses[1] != http.StatusBadRequest || statuses[n-1] != http.StatusBadRequest {
		t.Fatalf("statuses %v, want one 200 and the rest 400", statuses)
	}
	if got := calls(t, base).RefreshTokenReuse; got != n-1 {
		t.Errorf("RefreshTokenReuse = %d, want %d", got, n-1)
	}
}

func TestV1PasswordReset(t *testing.T) {
	e, base := newServer(t, testConfig())
	pat := e.userByName("pat")
	issue := func(t *testing.T) map[string]any {
		t.Helper()
		return v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"pat"}`).want(t, http.StatusOK).object(t)
	}

	before := e.now()
	rt := issue(t)
	if rt["kind"] != "RESET_PASSWORD" || rt["isRedeemed"] != false || rt["userId"] != pat.id || rt["email"] != "pat@example.com" {
		t.Errorf("reset token %v", rt)
	}
	if fmt.Sprint(rt["name"]) != fmt.Sprint(map[string]any{"first": "Pat", "middle": "", "last": "Kake"}) {
		t.Errorf("name %v", rt["name"])
	}
	exp, err := time.Parse(time.RFC3339, rt["expiresAt"].(string))
	if !v1Stamp.MatchString(rt["expiresAt"].(string)) || err != nil || exp.Sub(before) < 59*time.Minute || exp.Sub(before) > 61*time.Minute {
		t.Errorf("expiresAt %v, want about an hour from now in the seed format", rt["expiresAt"])
	}

	update := func(body map[string]any) response {
		return v1Do(t, base, "PATCH", "/auth/password", body)
	}
	u := update(map[string]any{"userId": pat.id, "resetToken": rt["token"], "newPassword": "new-password"}).want(t, http.StatusOK).object(t)
	if u["userId"] != pat.id {
		t.Errorf("update password answered %v", u)
	}
	v1LoginAs(t, base, "pat", "new-password")
	v1Do(t, base, "POST", "/auth/local/login", `{"username":"pat","password":"pat-password"}`).wantError(t, 400, "LOCAL_AUTH_FAILED")
	update(map[string]any{"userId": pat.id, "resetToken": rt["token"], "newPassword": "again"}).wantError(t, 404, "TOKEN_NOT_FOUND")
	v1LoginAs(t, base, "pat", "new-password")
	if got := calls(t, base).RefreshTokenReuse; got != 0 {
		t.Errorf("a reused reset token counted as refresh-token reuse: %d", got)
	}

	other := v1Register(t, base, "someone")
	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
		code   string
	}{
		{"other user's token", map[string]any{"userId": other["userId"], "resetToken": issue(t)["token"], "newPassword": "x"}, 404, "TOKEN_NOT_FOUND"},
		{"garbage token", map[string]any{"userId": pat.id, "resetToken": "2729f5bd121e9f67746830ce", "newPassword": "x"}, 404, "TOKEN_NOT_FOUND"},
		{"access token", map[string]any{"userId": pat.id, "resetToken": v1LoginAs(t, base, "pat", "new-password")["accessToken"], "newPassword": "x"}, 404, "TOKEN_NOT_FOUND"},
		{"unknown user", map[string]any{"userId": "000000000000000000000000", "resetToken": issue(t)["token"], "newPassword": "x"}, 404, "USER_NOT_FOUND"},
		{"missing userId", map[string]any{"resetToken": "t", "newPassword": "x"}, 400, "BAD_REQUEST"},
		{"missing resetToken", map[string]any{"userId": pat.id, "newPassword": "x"}, 400, "BAD_REQUEST"},
		{"old password instead of token", map[string]any{"userId": pat.id, "oldPassword": "new-password", "newPassword": "x"}, 400, "BAD_REQUEST"},
		{"missing newPassword", map[string]any{"userId": pat.id, "resetToken": "t"}, 400, "BAD_REQUEST"},
	} {
		t.Run(tc.name, func(t *testing.T) { update(tc.body).wantError(t, tc.status, tc.code) })
	}
	v1LoginAs(t, base, "pat", "new-password") // none of the failures changed the password

	t.Run("expired", func(t *testing.T) {
		tok := issue(t)["token"]
		setClock(t, base, "61m")
		defer setClock(t, base, "0s")
		update(map[string]any{"userId": pat.id, "resetToken": tok, "newPassword": "late"}).wantError(t, 401, "TOKEN_EXPIRED")
	})

	t.Run("reset errors", func(t *testing.T) {
		v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"nobody"}`).wantError(t, 404, "USER_NOT_FOUND")
		v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"gone"}`).wantError(t, 401, "USER_ACCOUNT_INACTIVE")
		v1Do(t, base, "PATCH", "/auth/local/reset", `{}`).wantV1BadRequest(t, "username is required")
		other := with(v1Header(), "X-Site-Context", `{"account":"cccccccccccccccccccccccc"}`)
		call{method: "PATCH", path: v1Prefix + "/auth/local/reset", header: other, body: `{"username":"pat"}`}.do(t, base).wantError(t, 404, "USER_NOT_FOUND")
	})

	t.Run("reset with a bearer token instead of the API key", func(t *testing.T) {
		at := v1LoginAs(t, base, "pat", "new-password")["accessToken"].(string)
		h := http.Header{"X-Site-Context": {testSite}}
		for _, auth := range []string{"Bearer " + at, at} {
			call{method: "PATCH", path: v1Prefix + "/auth/local/reset", header: with(h, "Authorization", auth), body: `{"username":"pat"}`}.
				do(t, base).want(t, http.StatusOK)
		}
		call{method: "PATCH", path: v1Prefix + "/auth/local/reset", header: with(h, "Authorization", "Bearer nope"), body: `{"username":"pat"}`}.
			do(t, base).wantError(t, 401, "UNAUTHORIZED")
		call{method: "PATCH", path: v1Prefix + "/auth/local/reset", header: h, body: `{"username":"pat"}`}.
			do(t, base).wantError(t, 401, "API_KEY_MISSING")
	})

	t.Run("deactivated user's token", func(t *testing.T) {
		tok := issue(t)["token"]
		v1PatchUser(t, base, "pat", map[string]any{"active": false})
		defer v1PatchUser(t, base, "pat", map[string]any{"active": true})
		update(map[string]any{"userId": pat.id, "resetToken": tok, "newPassword": "x"}).wantError(t, 401, "USER_ACCOUNT_INACTIVE")
	})
}

func TestV1ChangePassword(t *testing.T) {
	_, base := newServer(t, testConfig())
	id := v1Register(t, base, "changer")["userId"]
	change := func(body map[string]any) response { return v1Do(t, base, "PATCH", "/auth/change-password", body) }

	u := change(map[string]any{"userId": id, "oldPassword": "changer-pw", "newPassword": "second"}).want(t, http.StatusOK).object(t)
	if u["userId"] != id || u["isActive"] != true {
		t.Errorf("change password answered %v", u)
	}
	v1LoginAs(t, base, "changer", "second")

	tok := v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"changer"}`).want(t, http.StatusOK).object(t)["token"]
	change(map[string]any{"userId": id, "resetToken": tok, "newPassword": "third"}).want(t, http.StatusOK)
	v1LoginAs(t, base, "changer", "third")
	change(map[string]any{"userId": id, "resetToken": tok, "newPassword": "fourth"}).wantError(t, 404, "TOKEN_NOT_FOUND")

	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
		code   string
	}{
		{"wrong old password", map[string]any{"userId": id, "oldPassword": "second", "newPassword": "x"}, 400, "INCORRECT_PASSWORD"},
		{"unknown user", map[string]any{"userId": "000000000000000000000000", "oldPassword": "third", "newPassword": "x"}, 404, "USER_NOT_FOUND"},
		{"neither old password nor token", map[string]any{"userId": id, "newPassword": "x"}, 400, "BAD_REQUEST"},
		{"both old password and token", map[string]any{"userId": id, "oldPassword": "third", "resetToken": "t", "newPassword": "x"}, 400, "BAD_REQUEST"},
		{"missing newPassword", map[string]any{"userId": id, "oldPassword": "third"}, 400, "BAD_REQUEST"},
	} {
		t.Run(tc.name, func(t *testing.T) { change(tc.body).wantError(t, tc.status, tc.code) })
	}
	v1LoginAs(t, base, "changer", "third")

	v1PatchUser(t, base, "changer", map[string]any{"active": false})
	change(map[string]any{"userId": id, "oldPassword": "third", "newPassword": "x"}).wantError(t, 401, "USER_ACCOUNT_INACTIVE")
}

func TestV1CreateUser(t *testing.T) {
	_, base := newServer(t, testConfig())
	body := `{"user":{"name":{"first":"Ada","middle":"B","last":"Lovelace"},
		"phone":[{"number":"555-123-4567","countryCode":"+44","extenstion":"x-1","kind":"Mobile"}],
		"email":"ada@example.com","extra":{"tier":"gold"}},
		"provider":{"username":"ada.lovelace","password":"engine"}}`
	si := v1Do(t, base, "POST", "/user/local", body).want(t, http.StatusOK).object(t)
	if si["userType"] != "customer" || si["name"] != "Ada B Lovelace" || si["roles"] != "customer" || si["account"] != testAccount {
		t.Errorf("sign-in response %v", si)
	}
	if id, _ := si["userId"].(string); !v1Hex24.MatchString(id) {
		t.Errorf("userId %q is not 24 hex characters", id)
	}
	if kind := v1Claims(t, si["accessToken"])["userType"]; fmt.Sprint(kind) != "map[kind:REGISTERED]" {
		t.Errorf("userType claim %v", kind)
	}
	v1LoginAs(t, base, "ada.lovelace", "engine")

	u := call{method: "GET", path: v1Prefix + "/user/" + si["userId"].(string), header: with(v1Header(), "Authorization", "Bearer "+si["accessToken"].(string))}.
		do(t, base).want(t, http.StatusOK).object(t)
	for field, want := range map[string]string{
		"name":  "map[first:Ada last:Lovelace middle:B]",
		"phone": "[map[countryCode:+44 extenstion:x-1 kind:Mobile number:555-123-4567]]",
		"email": "ada@example.com",
		"extra": "map[tier:gold]",
	} {
		if got := fmt.Sprint(u[field]); got != want {
			t.Errorf("user %s = %s, want %s", field, got, want)
		}
	}

	v1Do(t, base, "POST", "/user/local", body).wantError(t, 400, "USER_ALREADY_EXISTS")
	v1Do(t, base, "POST", "/user/local", `{"provider":{"username":"PAT","password":"x"}}`).wantError(t, 400, "USER_ALREADY_EXISTS")
	v1Do(t, base, "POST", "/user/local", `{"provider":{"password":"x"}}`).wantV1BadRequest(t, "provider.username is required")
	v1Do(t, base, "POST", "/user/local", `{"provider":{"username":"newbie"}}`).wantV1BadRequest(t, "provider.password is required")
	v1Do(t, base, "POST", "/user/local", `{"user":{"phone":{"number":"1"}},"provider":{"username":"a","password":"b"}}`).wantV1BadRequest(t, `"user.phone" must be of type array`)
	v1Do(t, base, "POST", "/user/local", `{"user":{"extra":[]},"provider":{"username":"a","password":"b"}}`).wantV1BadRequest(t, `"user.extra" must be of type object`)

	t.Run("guest", func(t *testing.T) {
		g := v1Do(t, base, "POST", "/user/guest", `{"user":{"name":{"first":"Gus"},"email":"gus@example.com"}}`).want(t, http.StatusOK).object(t)
		if g["userType"] != "guest" || g["roles"] != "guest" || g["name"] != "Gus" {
			t.Errorf("guest sign-in response %v", g)
		}
		if kind := v1Claims(t, g["accessToken"])["userType"]; fmt.Sprint(kind) != "map[kind:GUEST]" {
			t.Errorf("guest userType claim %v", kind)
		}
		v1RefreshWith(t, base, g["refreshToken"]).want(t, http.StatusOK)
		g2 := v1Do(t, base, "POST", "/user/guest", `{}`).want(t, http.StatusOK).object(t)
		if g2["userId"] == g["userId"] {
			t.Errorf("two guests share the id %v", g["userId"])
		}
		withCreds := v1Do(t, base, "POST", "/user/guest", `{"provider":{"username":"guest.named","password":"pw"}}`).want(t, http.StatusOK).object(t)
		if v1LoginAs(t, base, "guest.named", "pw")["userType"] != "guest" || withCreds["userType"] != "guest" {
			t.Errorf("a guest with credentials is not a guest")
		}
		v1Do(t, base, "POST", "/user/guest", `{"provider":{"username":"guest.named","password":"pw"}}`).wantError(t, 400, "USER_ALREADY_EXISTS")
	})

	t.Run("tenant is the site context's account", func(t *testing.T) {
		other := `{"account":"dddddddddddddddddddddddd"}`
		si := call{method: "POST", path: v1Prefix + "/user/local", header: with(v1Header(), "X-Site-Context", other),
			body: `{"provider":{"username":"tenant.user","password":"pw"}}`}.do(t, base).want(t, http.StatusOK).object(t)
		if si["account"] != "dddddddddddddddddddddddd" {
			t.Errorf("account %v", si["account"])
		}
		v1Do(t, base, "POST", "/auth/local/login", `{"username":"tenant.user","password":"pw"}`).wantError(t, 400, "LOCAL_AUTH_FAILED")
	})
}

func TestV1GetUser(t *testing.T) {
	cfg := testConfig()
	cfg.APIKey = "" // a bearer token is required even without an API key
	e, base := newServer(t, cfg)
	si := v1LoginAs(t, base, "pat", "pat-password")
	at := si["accessToken"].(string)
	path := v1Prefix + "/user/" + si["userId"].(string)
	get := func(auth string) response {
		h := http.Header{"X-Site-Context": {testSite}}
		if auth != "" {
			h.Set("Authorization", auth)
		}
		return call{method: "GET", path: path, header: h}.do(t, base)
	}

	for _, auth := range []string{"Bearer " + at, "bearer " + at, at} {
		u := get(auth).want(t, http.StatusOK).object(t)
		if u["userId"] != si["userId"] || u["account"] != testAccount || u["roles"] != "customer" || u["isActive"] != true || u["email"] != "pat@example.com" {
			t.Errorf("user %v", u)
		}
		provider := u["provider"].([]any)[0].(map[string]any)
		if provider["name"] != "LOCAL" || !v1Hex24.MatchString(provider["id"].(string)) {
			t.Errorf("provider %v", provider)
		}
		for _, stamp := range []any{u["registrationDate"], u["expiryDate"], u["createdAt"], u["updatedAt"], provider["registrationDate"], provider["lastLoginDate"]} {
			if s, _ := stamp.(string); !v1Stamp.MatchString(s) {
				t.Errorf("timestamp %v is not in the seed format", stamp)
			}
		}
		if fmt.Sprint(u["address"], u["phone"], u["extra"]) != "[] [] map[]" {
			t.Errorf("address, phone, extra: %v %v %v", u["address"], u["phone"], u["extra"])
		}
	}

	// The User object's lastLoginDate is null until a first sign-in.
	tok := v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"gone"}`)
	tok.wantError(t, 401, "USER_ACCOUNT_INACTIVE")
	v1PatchUser(t, base, "gone", map[string]any{"active": true})
	tok = v1Do(t, base, "PATCH", "/auth/local/reset", `{"username":"gone"}`).want(t, 200)
	never := v1Do(t, base, "PATCH", "/auth/password", map[string]any{"userId": e.userByName("gone").id, "resetToken": tok.object(t)["token"], "newPassword": "x"}).
		want(t, 200).object(t)
	if lld := never["provider"].([]any)[0].(map[string]any)["lastLoginDate"]; lld != nil {
		t.Errorf("lastLoginDate %v for a user who never signed in, want null", lld)
	}

	get("").wantError(t, 401, "UNAUTHORIZED")
	get("Bearer "+si["refreshToken"].(string)).wantError(t, 401, "UNAUTHORIZED")
	get("Basic cGF0OnBhdA==").wantError(t, 401, "UNAUTHORIZED")
	get("Bearer "+at[:len(at)-2]).wantError(t, 401, "UNAUTHORIZED")
	call{method: "GET", path: v1Prefix + "/user/000000000000000000000000", header: http.Header{"X-Site-Context": {testSite}, "Authorization": {at}}}.
		do(t, base).wantError(t, 404, "USER_NOT_FOUND")
	call{method: "GET", path: path, header: http.Header{"X-Site-Context": {`{"account":"eeeeeeeeeeeeeeeeeeeeeeee"}`}, "Authorization": {at}}}.
		do(t, base).wantError(t, 404, "USER_NOT_FOUND")
	call{method: "GET", path: path, header: http.Header{"Authorization": {at}}}.do(t, base).wantError(t, 400, "BAD_REQUEST")

	setClock(t, base, "31m")
	get(at).wantError(t, 401, "TOKEN_EXPIRED")
	setClock(t, base, "0s")
	v1PatchUser(t, base, "pat", map[string]any{"active": false})
	get(at).wantError(t, 401, "UNAUTHORIZED")
}

func TestV1UpdateUsername(t *testing.T) {
	_, base := newServer(t, testConfig())
	si := v1Register(t, base, "first.name")
	id := si["userId"].(string)
	v1Register(t, base, "taken.name")
	rename := func(h http.Header, userID, oldName, newName string) response {
		return call{method: "PATCH", path: v1Prefix + "/user/" + userID + "/username", header: h,
			body: map[string]string{"oldUsername": oldName, "newUsername": newName}}.do(t, base)
	}

	u := rename(v1Header(), id, "first.name", "second.name").want(t, http.StatusOK).object(t)
	if u["userId"] != id {
		t.Errorf("rename answered %v", u)
	}
	v1LoginAs(t, base, "second.name", "first.name-pw")
	v1Do(t, base, "POST", "/auth/local/login", `{"username":"first.name","password":"first.name-pw"}`).wantError(t, 400, "LOCAL_AUTH_FAILED")
	// The old name is free again.
	v1Register(t, base, "first.name")

	for _, tc := range []struct {
		name, userID, old, new string
		status                 int
		code                   string
	}{
		{"old name too short", id, "abcd", "valid.name", 400, "BAD_REQUEST"},
		{"new name too short", id, "second.name", "abcd", 400, "BAD_REQUEST"},
		{"new name too long", id, "second.name", strings.Repeat("n", 41), 400, "BAD_REQUEST"},
		{"old name is not the user's", id, "taken.name", "valid.name", 400, "BAD_REQUEST"},
		{"new name taken", id, "second.name", "TAKEN.NAME", 400, "USER_ALREADY_EXISTS"},
		{"unknown user", "000000000000000000000000", "second.name", "valid.name", 404, "USER_NOT_FOUND"},
	} {
		t.Run(tc.name, func(t *testing.T) { rename(v1Header(), tc.userID, tc.old, tc.new).wantError(t, tc.status, tc.code) })
	}

	// Five and forty characters are allowed; so is changing the case of one's own name.
	rename(v1Header(), id, "second.name", strings.Repeat("n", 40)).want(t, http.StatusOK)
	rename(v1Header(), id, strings.Repeat("n", 40), "fifth").want(t, http.StatusOK)
	rename(v1Header(), id, "fifth", "FIFTH").want(t, http.StatusOK)
	v1LoginAs(t, base, "fifth", "first.name-pw")

	bearerOnly := http.Header{"X-Site-Context": {testSite}, "Authorization": {"Bearer " + si["accessToken"].(string)}}
	rename(bearerOnly, id, "fifth", "sixth").want(t, http.StatusOK)
	rename(with(bearerOnly, "Authorization", "Bearer x.y.z"), id, "sixth", "seventh").wantError(t, 401, "UNAUTHORIZED")
	rename(http.Header{"X-Site-Context": {testSite}}, id, "sixth", "seventh").wantError(t, 401, "API_KEY_MISSING")
}

func TestV1Addresses(t *testing.T) {
	_, base := newServer(t, testConfig())
	id := v1Register(t, base, "addressee")["userId"].(string)
	emptyID := v1Register(t, base, "homeless")["userId"].(string)
	addr := func(city string, zip any, kind string) map[string]any {
		return map[string]any{"address1": "1 Main St.", "city": city, "state": "TX", "country": "USA", "zipCode": zip,
			"email": "a@example.com", "kind": kind, "phone": map[string]string{"number": "555", "kind": "Mobile"},
			"name": map[string]string{"first": "Ada", "last": "Lovelace"}}
	}
	at := func(path string) string { return "/user/" + id + "/address" + path }

	v1Do(t, base, "GET", at(""), nil).wantError(t, 404, "ADDRESSES_NOT_FOUND")
	list := v1Do(t, base, "POST", at(""), addr("Houston", 77035, "Business")).want(t, http.StatusOK).v1Array(t)
	if len(list) != 1 || list[0]["isDefault"] != true || list[0]["isValidated"] != false || list[0]["zipCode"] != float64(77035) {
		t.Fatalf("first address %v: want the default, not validated, zipCode a number", list)
	}
	home := addr("Austin", "73301", "Home")
	home["isDefault"], home["isValidated"], home["_id"] = true, true, "chosen-by-client" // the server owns these
	list = v1Do(t, base, "POST", at(""), home).want(t, http.StatusOK).v1Array(t)
	if len(list) != 2 || list[1]["isDefault"] != false || list[1]["isValidated"] != false || list[1]["zipCode"] != "73301" || list[1]["_id"] == "chosen-by-client" {
		t.Fatalf("second address %v: want not default, zipCode kept a string, a server id", list[1])
	}
	first, second := list[0]["_id"].(string), list[1]["_id"].(string)
	if !v1Hex24.MatchString(first) || !v1Hex24.MatchString(second) || first == second {
		t.Fatalf("address ids %q %q", first, second)
	}

	if got := v1Do(t, base, "GET", at(""), nil).want(t, 200).v1Array(t); len(got) != 2 {
		t.Errorf("list has %d addresses, want 2", len(got))
	}
	if got := v1Do(t, base, "GET", at("?kind=home"), nil).want(t, 200).v1Array(t); len(got) != 1 || got[0]["_id"] != second {
		t.Errorf("kind=home lists %v", got)
	}
	v1Do(t, base, "GET", at("?kind=Shipping"), nil).wantError(t, 404, "ADDRESSES_NOT_FOUND")
	if got := v1Do(t, base, "GET", at("/"+second), nil).want(t, 200).v1Array(t); len(got) != 1 || got[0]["city"] != "Austin" {
		t.Errorf("get answered %v, want the one address", got)
	}

	// Update replaces the fields but keeps the id and the default flag.
	list = v1Do(t, base, "PUT", at("/"+first), addr("Dallas", "75001", "")).want(t, 200).v1Array(t)
	if list[0]["_id"] != first || list[0]["city"] != "Dallas" || list[0]["isDefault"] != true || list[0]["kind"] != nil {
		t.Errorf("updated address %v", list[0])
	}

	list = v1Do(t, base, "POST", at("/"+second+"/set"), nil).want(t, 200).v1Array(t)
	if list[0]["isDefault"] != false || list[1]["isDefault"] != true {
		t.Errorf("after set: %v", list)
	}
	list = v1Do(t, base, "POST", at("/"+second+"/unset"), nil).want(t, 200).v1Array(t)
	if list[0]["isDefault"] != false || list[1]["isDefault"] != false {
		t.Errorf("after unset: %v", list)
	}
	list = v1Do(t, base, "POST", at("/"+first+"/set"), nil).want(t, 200).v1Array(t)
	if list[0]["isDefault"] != true || list[1]["isDefault"] != false {
		t.Errorf("after set first: %v", list)
	}

	// The user object carries the addresses.
	si := v1LoginAs(t, base, "addressee", "addressee-pw")
	u := call{method: "GET", path: v1Prefix + "/user/" + id, header: with(v1Header(), "Authorization", si["accessToken"].(string))}.do(t, base).want(t, 200).object(t)
	if got := u["address"].([]any); len(got) != 2 {
		t.Errorf("user object has %d addresses, want 2", len(got))
	}

	list = v1Do(t, base, "DELETE", at("/"+first), nil).want(t, 200).v1Array(t)
	if len(list) != 1 || list[0]["_id"] != second {
		t.Errorf("after delete: %v", list)
	}
	v1Do(t, base, "DELETE", at("/"+first), nil).wantError(t, 404, "ADDRESS_NOT_FOUND")
	if got := v1Do(t, base, "DELETE", at("/"+second), nil).want(t, 200); string(got.body) != "[]" {
		t.Errorf("deleting the last address answered %s, want []", got.body)
	}
	v1Do(t, base, "GET", at(""), nil).wantError(t, 404, "ADDRESSES_NOT_FOUND")

	for _, tc := range []struct{ method, path string }{
		{"GET", "/x"}, {"PUT", "/x"}, {"DELETE", "/x"}, {"POST", "/x/set"}, {"POST", "/x/unset"},
	} {
		t.Run("unknown address "+tc.method+tc.path, func(t *testing.T) {
			var body any
			if tc.method == "PUT" {
				body = addr("Waco", 1, "")
			}
			v1Do(t, base, tc.method, at(tc.path), body).wantError(t, 404, "ADDRESS_NOT_FOUND")
			v1Do(t, base, tc.method, "/user/000000000000000000000000/address"+tc.path, body).wantError(t, 404, "USER_NOT_FOUND")
		})
	}
	v1Do(t, base, "GET", "/user/000000000000000000000000/address", nil).wantError(t, 404, "USER_NOT_FOUND")
	v1Do(t, base, "POST", "/user/000000000000000000000000/address", addr("Waco", 1, "")).wantError(t, 404, "USER_NOT_FOUND")
	v1Do(t, base, "GET", "/user/"+emptyID+"/address", nil).wantError(t, 404, "ADDRESSES_NOT_FOUND")
	noKey := v1Header()
	noKey.Del("X-Api-Key")
	call{method: "GET", path: v1Prefix + at(""), header: noKey}.do(t, base).wantError(t, 401, "API_KEY_MISSING")

	for _, field := range []string{"address1", "city", "state", "country", "zipCode", "email"} {
		t.Run("missing "+field, func(t *testing.T) {
			a := addr("Waco", 1, "")
			delete(a, field)
			v1Do(t, base, "POST", at(""), a).wantV1BadRequest(t, field+" is required")
			a[field] = ""
			v1Do(t, base, "PUT", at("/"+first), a).wantV1BadRequest(t, field+" is required")
		})
	}
	for name, zip := range map[string]any{"boolean": true, "object": map[string]any{}, "array": []int{1}} {
		t.Run("zipCode "+name, func(t *testing.T) {
			v1Do(t, base, "POST", at(""), addr("Waco", zip, "")).wantV1BadRequest(t, "zipCode")
		})
	}
	v1Do(t, base, "POST", at(""), `{"address1":"a","city":"b","state":"c","country":"d","zipCode":1,"email":"e","phone":"555"}`).
		wantV1BadRequest(t, `"phone" must be of type object`)
	v1Do(t, base, "GET", at(""), nil).wantError(t, 404, "ADDRESSES_NOT_FOUND") // nothing was added by the failures
}

func TestV1SchemaShapes(t *testing.T) {
	cfg := testConfig()
	cfg.SchemaShapes = true
	cfg.Users = append(cfg.Users, User{Username: "admin", Password: "pw", Account: testAccount, FirstName: "Ad", LastName: "Min", Roles: []string{"customer", "admin"}})
	_, base := newServer(t, cfg)

	si := v1LoginAs(t, base, "admin", "pw")
	if fmt.Sprint(si["roles"]) != "[customer admin]" || fmt.Sprint(si["name"]) != "map[first:Ad last:Min middle:]" {
		t.Errorf("schema shapes: roles %v name %v, want an array and an object", si["roles"], si["name"])
	}
	u := call{method: "GET", path: v1Prefix + "/user/" + si["userId"].(string), header: with(v1Header(), "Authorization", si["accessToken"].(string))}.
		do(t, base).want(t, 200).object(t)
	if fmt.Sprint(u["roles"]) != "[customer admin]" {
		t.Errorf("schema shapes: user roles %v", u["roles"])
	}
	if n := len(v1Claims(t, si["accessToken"])["roles"].([]any)); n != 2 {
		t.Errorf("access token has %d roles, want 2", n)
	}

	_, plain := newServer(t, Config{APIKey: testAPIKey, Users: cfg.Users[2:]})
	si = v1LoginAs(t, plain, "admin", "pw")
	if si["roles"] != "customer,admin" || si["name"] != "Ad Min" {
		t.Errorf("example shapes: roles %v name %v, want strings", si["roles"], si["name"])
	}
}

func TestV1CountersAndFaults(t *testing.T) {
	_, base := newServer(t, testConfig())
	si := v1LoginAs(t, base, "pat", "pat-password")
	v1RefreshWith(t, base, si["refreshToken"]).want(t, 200)
	v1RefreshWith(t, base, "x").want(t, 400)
	c := calls(t, base).Calls
	if c["v1.refresh"] != 2 || c["v1.login"] != 1 || c["v1.reset"] != 0 {
		t.Errorf("calls %v, want 2 refreshes and 1 login", c)
	}

	addFault(t, base, Fault{Endpoint: "v1.refresh", Status: 500, Times: 1})
	r := v1RefreshWith(t, base, si["refreshToken"])
	r.want(t, 500)
	if string(r.body) != `{"code":"500","error":"INTERNAL_SERVER_ERROR","message":"Internal server error"}` {
		t.Errorf("500 body %s", r.body)
	}

	fresh := v1LoginAs(t, base, "pat", "pat-password")
	addFault(t, base, Fault{Endpoint: "v1.refresh", Reject: true, Times: 1})
	v1RefreshWith(t, base, fresh["refreshToken"]).wantError(t, 400, "LOCAL_AUTH_FAILED")
	// The rejected call did not use the token up.
	v1RefreshWith(t, base, fresh["refreshToken"]).want(t, 200)
	if got := calls(t, base).Calls["v1.refresh"]; got != 5 {
		t.Errorf("v1.refresh counted %d calls, want 5", got)
	}
}
