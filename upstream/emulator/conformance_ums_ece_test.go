package emulator

import (
	"encoding/json"
	"net/http"
	"testing"
)

// The examples below are transcribed from the seed documents in /work/shared/seeds, verbatim but
// for the "•" list markers of the rendered page, which are not JSON.

// Seed 003 (003_1f3d656cd519f2aa.txt), "POST /users/auth/_refresh", "Response examples (200)".
const seedECERefresh200 = `{
  "token": "string",
  "session_expiration_time": "2024-05-04T09:42:00+00:00"
}`

// Seed 003, "Response examples (401)", "(501)" and "(502)": the same payload under three headers:
//
//	x-cloud-error-codes: root.unauthorized
//	x-cloud-error-codes: authc.no_authentication_cluster
//	x-cloud-error-codes: authc.authentication_cluster_error
const seedECEError = `{
  "errors": [
    {
      "code": "string",
      "message": "string",
      "fields": [
        "string"
      ]
    }
  ]
}`

// Seed 004 (004_b741f5ef70dd1870.txt), "Get user details", "Response samples". The rendered page
// shows accounts collapsed as "{ }".
const seedUMSGetSelf = `{
  "id": "1234-1234-1234",
  "status": "active",
  "isStaffUserFederated": true,
  "loginId": "sdsdf232ew-123asdaa-1231231",
  "orgId": "123123-23wdd-123234",
  "type": "staff",
  "email": "test.user@foobar.com",
  "primarycontact": "+1 650 333 4444",
  "firstName": "Test",
  "lastName": "User",
  "meta": "meta",
  "accounts": {
  },
  "createdAt": "2019-08-24T14:15:22Z",
  "updatedAt": "2019-08-24T14:15:22Z",
  "deletedAt": "2019-08-24T14:15:22Z"
}`

// Seed 004, "Update user details", "Request samples".
const seedUMSUpdateRequest = `{
  "loginId": "sdsdf232ew-123asdaa-1231231",
  "email": "test.user@foobar.com",
  "firstName": "Test",
  "lastName": "Jr",
  "primaryContact": "+1 650 333 4444"
}`

// Seed 004, "Update user details", "Response samples".
const seedUMSUpdateResponse = `{
  "id": "1231012312-312-31231asda",
  "status": "active",
  "orgId": "4ed1acc6-7799-4bee-856e-91f18ca77d7a",
  "loginId": "testuser@gmail.com",
  "isStaffUserFederated": true,
  "type": "staff",
  "email": "foo@bar.com",
  "primaryContact": "+1 234 8992341234",
  "firstName": "James",
  "lastName": "Bond",
  "meta": "meta",
  "createdAt": "2022-03-10T09:20:19.000Z",
  "updatedAt": "2022-03-10T09:27:42.000Z",
  "deletedAt": "2022-03-10T09:20:19.000Z"
}`

// Seed 004, "Change password", "Request samples" and "Response samples".
const (
	seedUMSPasswordRequest = `{
  "oldPassword": "myoldPassword",
  "newPassword": "mynewPassword"
}`
	seedUMSPasswordResponse = `{
  "code": "PASSWORD_CHANGED",
  "message": "Password changed successfully."
}`
)

// Seed 004, "Forgot password", "Request samples" and "Response samples".
const (
	seedUMSForgotRequest = `{
  "loginId": "johndoe@fabric.inc"
}`
	seedUMSForgotResponse = `{
  "success": "FORGOT_PASSWORD_INITIATED",
  "message": "If user was found a reset link will be sent to the provided email"
}`
)

// decoded parses a response body as JSON.
func (r response) decoded(t *testing.T) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	return v
}

// assertECEError checks an error answer against seed 003's example and documented code. fields is
// optional in the seed ("fields array[string]", not Required) and empty when an error names no
// field, so the example's one-element array is checked for its type only.
func assertECEError(t *testing.T, where string, r response, status int, code, message string) {
	t.Helper()
	r.want(t, status)
	if h := r.header.Get("x-cloud-error-codes"); h != code {
		t.Errorf("%s: x-cloud-error-codes %q, want %q", where, h, code)
	}
	want := example(t, seedECEError).(map[string]any)
	entry := want["errors"].([]any)[0].(map[string]any)
	delete(entry, "fields")
	got := r.decoded(t)
	assertShape(t, where, got, want)
	for _, e := range got.(map[string]any)["errors"].([]any) {
		e := e.(map[string]any)
		if e["code"] != code || e["message"] != message {
			t.Errorf("%s: error %v, want code %q and message %q", where, e, code, message)
		}
		if f, present := e["fields"]; present {
			fields, ok := f.([]any)
			if !ok {
				t.Errorf("%s: fields is %s, want an array", where, jsonKind(f))
			}
			for _, name := range fields {
				if _, ok := name.(string); !ok {
					t.Errorf("%s: field %v is not a string", where, name)
				}
			}
		}
	}
}

func TestConformanceECERefresh(t *testing.T) {
	_, base := newServer(t, testConfig())
	tok := eceSession(t, base)

	r := eceRefreshCall(t, base, bearerHeader(tok)).want(t, http.StatusOK)
	assertShape(t, "_refresh 200", r.decoded(t), example(t, seedECERefresh200))

	// The seed's error descriptions are the messages.
	assertECEError(t, "_refresh 401", eceRefreshCall(t, base, bearerHeader(tok)), http.StatusUnauthorized,
		"root.unauthorized", "The authentication token is invalid or expired.")
	for _, tc := range []struct {
		status        int
		code, message string
	}{
		{http.StatusNotImplemented, "authc.no_authentication_cluster", "The administrator needs to configure the authentication cluster."},
		{http.StatusBadGateway, "authc.authentication_cluster_error",
			"The authentication cluster failed to process the request. The response body contains details about the error."},
	} {
		addFault(t, base, Fault{Endpoint: "ece.refresh", Status: tc.status, Times: 1})
		assertECEError(t, "_refresh "+http.StatusText(tc.status), eceRefreshCall(t, base, bearerHeader(tok)), tc.status, tc.code, tc.message)
	}
}

func TestConformanceUMS(t *testing.T) {
	_, base := newServer(t, testConfig())
	h := bearerHeader(userTokens(t, base).AccessToken)
	// The password the seed's change-password sample starts from.
	call{method: "PATCH", path: ControlPrefix + "users/pat", body: map[string]string{"password": "myoldPassword"}}.do(t, base).want(t, http.StatusOK)

	get := call{method: "GET", path: umsPath + "/users/self", header: h}.do(t, base).want(t, http.StatusOK)
	// deletedAt is null for a user that is not deleted; the seed's example shows a timestamp.
	assertShape(t, "GET /users/self", get.decoded(t), example(t, seedUMSGetSelf), "deletedAt")

	put := call{method: "PUT", path: umsPath + "/users/self", header: h, body: seedUMSUpdateRequest}.do(t, base).want(t, http.StatusOK)
	assertShape(t, "PUT /users/self", put.decoded(t), example(t, seedUMSUpdateResponse), "deletedAt")
	sent := example(t, seedUMSUpdateRequest).(map[string]any)
	for k, v := range put.object(t) {
		if want, ok := sent[k]; ok && v != want {
			t.Errorf("PUT /users/self: %s = %v, want %v as sent", k, v, want)
		}
	}

	pw := call{method: "POST", path: umsPath + "/auth/self/password", header: with(h, "x-site-context", testSite), body: seedUMSPasswordRequest}.do(t, base)
	assertShape(t, "POST /auth/self/password", pw.want(t, http.StatusOK).decoded(t), example(t, seedUMSPasswordResponse))
	if string(pw.body) != string(mustCompact(t, seedUMSPasswordResponse)) {
		t.Errorf("password answer %s, want the seed's %s", pw.body, seedUMSPasswordResponse)
	}

	forgot := call{method: "POST", path: umsPath + "/auth/forgot-password", body: seedUMSForgotRequest}.do(t, base).want(t, http.StatusOK)
	if string(forgot.body) != string(mustCompact(t, seedUMSForgotResponse)) {
		t.Errorf("forgot-password answer %s, want the seed's %s", forgot.body, seedUMSForgotResponse)
	}

	// Documented statuses: 403 "User is not allowed to perform the action", 500 "The request
	// was received but an internal error occurred".
	sys := bearerHeader(clientToken(t, base))
	for _, c := range []call{
		{method: "GET", path: umsPath + "/users/self", header: sys},
		{method: "PUT", path: umsPath + "/users/self", header: sys, body: seedUMSUpdateRequest},
		{method: "POST", path: umsPath + "/auth/self/password", header: with(sys, "x-site-context", testSite), body: seedUMSPasswordRequest},
	} {
		m := c.do(t, base).want(t, http.StatusForbidden).object(t)
		if m["code"] != "FORBIDDEN" || m["message"] != "User is not allowed to perform the action" {
			t.Errorf("%s %s: %v", c.method, c.path, m)
		}
	}
	for _, ep := range []string{"ums.get_self", "ums.forgot_password"} {
		addFault(t, base, Fault{Endpoint: ep, Status: http.StatusInternalServerError, Times: 1})
	}
	for _, c := range []call{
		{method: "GET", path: umsPath + "/users/self", header: h},
		{method: "POST", path: umsPath + "/auth/forgot-password", body: seedUMSForgotRequest},
	} {
		m := c.do(t, base).want(t, http.StatusInternalServerError).object(t)
		if m["message"] != "The request was received but an internal error occurred" {
			t.Errorf("%s %s: %v", c.method, c.path, m)
		}
	}
}

// mustCompact is a seed example without its whitespace, as the emulator writes JSON.
func mustCompact(t *testing.T, src string) []byte {
	t.Helper()
	b, err := json.Marshal(example(t, src))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
