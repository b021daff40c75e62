package emulator

import (
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const umsPath = "/ums/v2"

func bearerHeader(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// v1AccessToken mints a v1 access token for username, as the v1 login would.
func v1AccessToken(t *testing.T, e *Emulator, username string) string {
	t.Helper()
	u := e.userByName(username)
	e.mu.Lock()
	id := u.id
	e.mu.Unlock()
	exp := e.now().Add(time.Hour)
	return e.mint(jwt.MapClaims{"sub": id, "exp": exp.Unix()}, token{kind: kindV1Access, userID: id, exp: exp})
}

// wantUMSError fails unless r is a UMS error {code, message} with status and code.
func (r response) wantUMSError(t *testing.T, status int, code string) {
	t.Helper()
	r.want(t, status)
	m := r.object(t)
	if m["code"] != code || m["message"] == "" || m["message"] == nil || len(m) != 2 {
		t.Fatalf("error %s, want {code: %q, message}", r.body, code)
	}
}

func TestUMSGetSelf(t *testing.T) {
	e, base := newServer(t, testConfig())
	for name, tok := range map[string]string{"oauth2": userTokens(t, base).AccessToken, "v1": v1AccessToken(t, e, "pat")} {
		m := call{method: "GET", path: umsPath + "/users/self", header: bearerHeader(tok)}.do(t, base).want(t, http.StatusOK).object(t)
		for k, want := range map[string]any{
			"status": "active", "isStaffUserFederated": false, "loginId": "pat", "orgId": testAccount, "type": "customer",
			"email": "pat@example.com", "primarycontact": "", "firstName": "Pat", "lastName": "Kake", "meta": "{}",
		} {
			if m[k] != want {
				t.Errorf("%s: %s = %v, want %v", name, k, m[k], want)
			}
		}
		if id, _ := m["id"].(string); len(id) != 36 {
			t.Errorf("%s: id %v, want the fabric user id (a UUID)", name, m["id"])
		}
		if a, ok := m["accounts"].(map[string]any); !ok || len(a) != 0 {
			t.Errorf("%s: accounts %v, want {}", name, m["accounts"])
		}
		if v, ok := m["deletedAt"]; !ok || v != nil {
			t.Errorf("%s: deletedAt %v, want null", name, v)
		}
		if _, err := time.Parse(time.RFC3339, m["createdAt"].(string)); err != nil {
			t.Errorf("%s: createdAt: %v", name, err)
		}
	}

	call{method: "GET", path: umsPath + "/users/self", header: bearerHeader(clientToken(t, base))}.do(t, base).wantUMSError(t, http.StatusForbidden, "FORBIDDEN")
	for _, h := range []http.Header{nil, bearerHeader("garbage"), bearerHeader(userTokens(t, base).IDToken)} {
		call{method: "GET", path: umsPath + "/users/self", header: h}.do(t, base).wantUMSError(t, http.StatusUnauthorized, "UNAUTHORIZED")
	}
}

func TestUMSUpdateSelf(t *testing.T) {
	e, base := newServer(t, testConfig())
	h := bearerHeader(userTokens(t, base).AccessToken)
	put := func(body any) response {
		return call{method: "PUT", path: umsPath + "/users/self", header: h, body: body}.do(t, base)
	}

	setClock(t, base, "1m")
	r := put(map[string]string{"firstName": "Patricia", "primaryContact": "+1 650 333 4444", "email": "patricia@example.com"}).want(t, http.StatusOK)
	m := r.object(t)
	if m["firstName"] != "Patricia" || m["lastName"] != "Kake" || m["primaryContact"] != "+1 650 333 4444" || m["email"] != "patricia@example.com" {
		t.Errorf("PUT answer %s", r.body)
	}
	if _, ok := m["accounts"]; ok {
		t.Errorf("PUT answer has accounts: %s", r.body)
	}
	if _, ok := m["primarycontact"]; ok {
		t.Errorf("PUT answer spells primarycontact: %s", r.body)
	}
	if m["updatedAt"] == m["createdAt"] {
		t.Errorf("updatedAt not moved: %s", r.body)
	}
	got := call{method: "GET", path: umsPath + "/users/self", header: h}.do(t, base).want(t, http.StatusOK).object(t)
	if got["firstName"] != "Patricia" || got["primarycontact"] != "+1 650 333 4444" {
		t.Errorf("GET after PUT: %v", got)
	}

	put(map[string]string{"email": "not an email"}).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	put(map[string]string{"email": "Pat <pat@example.com>"}).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	put(map[string]string{"loginId": " "}).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	put(map[string]string{"loginId": "GONE"}).wantUMSError(t, http.StatusBadRequest, "USER_ALREADY_EXISTS")
	put(`{"firstName": 7}`).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	put(`{"firstName": `).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")

	// A new loginId is the user's new username.
	put(map[string]string{"loginId": "pat.kake@example.com"}).want(t, http.StatusOK)
	if e.userByName("pat") != nil || e.userByName("pat.kake@example.com") == nil {
		t.Errorf("loginId change not applied to the username")
	}
	eceLogin(t, base, "pat.kake@example.com", "pat-password").want(t, http.StatusOK)

	call{method: "PUT", path: umsPath + "/users/self", header: bearerHeader(clientToken(t, base)), body: map[string]string{}}.do(t, base).
		wantUMSError(t, http.StatusForbidden, "FORBIDDEN")
	call{method: "PUT", path: umsPath + "/users/self", body: map[string]string{}}.do(t, base).wantUMSError(t, http.StatusUnauthorized, "UNAUTHORIZED")
}

func TestUMSChangePassword(t *testing.T) {
	e, base := newServer(t, testConfig())
	h := with(bearerHeader(v1AccessToken(t, e, "pat")), "x-site-context", testSite)
	change := func(h http.Header, body any) response {
		return call{method: "POST", path: umsPath + "/auth/self/password", header: h, body: body}.do(t, base)
	}
	ok := map[string]string{"oldPassword": "pat-password", "newPassword": "pat-new-password"}

	change(bearerHeader(v1AccessToken(t, e, "pat")), ok).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	change(with(h, "x-site-context", `{"account":"short"}`), ok).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	change(h, map[string]string{"oldPassword": "pat-password"}).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	change(h, `[]`).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	change(h, map[string]string{"oldPassword": "wrong", "newPassword": "x"}).wantUMSError(t, http.StatusForbidden, "FORBIDDEN")
	change(with(h, "Authorization", ""), ok).wantUMSError(t, http.StatusUnauthorized, "UNAUTHORIZED")
	change(with(h, "Authorization", "Bearer "+clientToken(t, base)), ok).wantUMSError(t, http.StatusForbidden, "FORBIDDEN")

	m := change(h, ok).want(t, http.StatusOK).object(t)
	if m["code"] != "PASSWORD_CHANGED" || m["message"] != "Password changed successfully." {
		t.Errorf("answer %v", m)
	}
	if _, err := e.authenticate("pat", "pat-new-password"); err != nil {
		t.Errorf("new password refused: %v", err)
	}
	if _, err := e.authenticate("pat", "pat-password"); err == nil {
		t.Errorf("old password still accepted")
	}
}

func TestUMSForgotPassword(t *testing.T) {
	_, base := newServer(t, testConfig())
	forgot := func(body any) response {
		return call{method: "POST", path: umsPath + "/auth/forgot-password", body: body}.do(t, base)
	}
	known := forgot(map[string]string{"loginId": "pat"}).want(t, http.StatusOK)
	unknown := forgot(map[string]string{"loginId": "nobody@example.com"}).want(t, http.StatusOK)
	if string(known.body) != string(unknown.body) {
		t.Errorf("answers differ for a known and an unknown user:\n%s\n%s", known.body, unknown.body)
	}
	m := known.object(t)
	if m["success"] != "FORGOT_PASSWORD_INITIATED" || m["message"] != "If user was found a reset link will be sent to the provided email" || len(m) != 2 {
		t.Errorf("answer %s", known.body)
	}
	forgot(map[string]string{}).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	forgot(`{"loginId":`).wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
	forgot("").wantUMSError(t, http.StatusBadRequest, "BAD_REQUEST")
}
