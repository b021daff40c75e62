package emulator

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
)

// Conformance of the fabric Identity v1 endpoints with the seed documents (shared/seeds): each
// response must carry every field of the seed's example with the same JSON type, and the
// documented errors must match the seed's examples field for field. The examples below are
// transcribed from the seeds' flattened reference into JSON, values unchanged.

// seedV1SiteContext is the x-site-context example of seeds 000 and 001 (parameter xSiteContent).
// Its account is 24 characters but not hex.
const seedV1SiteContext = `{"date": "2023-01-01T00:00:00.000Z", "channel": 12, "account": "1234abcd5678efgh9ijklmno","stage":"production"}`

// seedV1SignIn is the 200 example of seed 002 "Log in local user with password"; "Refresh local user
// with refresh token", "Create local user" and "Create guest user" show the same example.
const seedV1SignIn = `{
  "_id": "596f7557696e2d4d617a616c546f7621",
  "userId": "6169b2d892a5f30009d76480",
  "roles": "customer",
  "name": "Pat E Kake",
  "account": "xxxxxcxxxxxxxxxxxxxx",
  "userType": "customer",
  "accessToken": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4...",
  "refreshToken": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4..."
}`

// seedV1SignInSchema is seed 000's SignInResponse schema with its property examples: roles an
// array of strings and name an object, the shapes of Config.SchemaShapes.
const seedV1SignInSchema = `{
  "_id": "596f7557696e2d4d617a616c546f7621",
  "userId": "6169b2d892a5f30009d76480",
  "roles": ["customer"],
  "name": {"first": "Pat", "middle": "E", "last": "Kake"},
  "account": "xxxxxcxxxxxxxxxxxxxx",
  "userType": "customer",
  "accessToken": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4...",
  "refreshToken": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4..."
}`

// seedV1Address is the address of seed 002's address examples: "List all addresses for specified
// user", and the 200 arrays of create, get, update, delete, set default and unset default.
const seedV1Address = `{
  "attention": "Account Manager",
  "address1": "1234 Main St.",
  "address2": "Suite 710",
  "address3": "Floor 7",
  "city": "Houston",
  "state": "TX",
  "country": "USA",
  "zipCode": 77035,
  "company": "Acme Inc.",
  "kind": "Business",
  "phone": {"number": "555-123-4567", "kind": "Mobile"},
  "name": {"first": "Pat", "last": "Kake"},
  "email": "test@mail.com",
  "isValidated": true,
  "isDefault": true
}`

// seedV1Addresses is the 200 example of seed 002 "List all addresses for specified user" (and of
// "Create address", "Get specified address", "Update specified address", "Delete specified
// address", "Set default address", "Unset default address").
const seedV1Addresses = `[` + seedV1Address + `]`

// seedV1AddressRequest is the request example of seed 002 "Create address for specified user" and
// "Update specified address for specified user".
const seedV1AddressRequest = `{
  "attention": "Account Manager",
  "address1": "1234 Main St.",
  "address2": "Suite 710",
  "address3": "Floor 7",
  "city": "Houston",
  "state": "TX",
  "country": "USA",
  "zipCode": 77035,
  "company": "Acme Inc.",
  "kind": "Business",
  "phone": {"number": "555-123-4567", "kind": "Mobile"},
  "name": {"first": "Pat", "last": "Kake"},
  "email": "test@mail.com"
}`

// seedV1User is the 200 example of seed 002 "Get user details"; "Update a user's login user name",
// "Update user password" and "Change password for signed-in user" show the same example.
const seedV1User = `{
  "isActive": true,
  "registrationDate": "2020-04-15T10:08:04.246Z",
  "expiryDate": "2020-04-15T10:08:04.246Z",
  "roles": "customer",
  "name": {"first": "Pat", "middle": "E", "last": "Kake"},
  "phone": [{"number": "555-123-4567", "countryCode": "+91", "extenstion": "x-6789", "kind": "Mobile"}],
  "email": "test@mail.com",
  "extra": {},
  "registrationSite": "XXX",
  "account": "xxxxxcxxxxxxxxxxxxxx",
  "userId": "6169b2d892a5f30009d76480",
  "address": ` + seedV1Addresses + `,
  "provider": [{
    "id": "6228f647a257734d91dbb49f",
    "name": "LOCAL",
    "isActive": true,
    "registrationDate": "2020-04-15T10:08:04.246Z",
    "lastLoginDate": "2020-04-15T10:08:04.246Z"
  }],
  "createdAt": "2020-04-15T10:08:04.246Z",
  "updatedAt": "2020-04-15T10:08:04.246Z"
}`

// seedV1CreateUserRequest is the request example of seed 002 "Create local user" and "Create guest
// user".
const seedV1CreateUserRequest = `{
  "user": {
    "name": {"first": "Pat", "middle": "E", "last": "Kake"},
    "phone": [{"number": "555-123-4567", "countryCode": "+91", "extenstion": "x-6789", "kind": "Mobile"}],
    "email": "test@mail.com",
    "extra": {}
  },
  "provider": {"username": "user101", "password": "ABC123"}
}`

// seedV1ResetToken is the 200 example of seed 002 "Reset password for specified user" (seed 001
// gives the same fields in its schema).
const seedV1ResetToken = `{
  "token": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4...",
  "kind": "RESET_PASSWORD",
  "expiresAt": "2020-04-15T10:08:04.246Z",
  "isRedeemed": true,
  "userId": "6169b2d892a5f30009d76480",
  "name": {"first": "Pat", "middle": "E", "last": "Kake"},
  "email": "test@mail.com"
}`

// The APIError examples of seeds 000 (auth-local-400, auth-local-401) and 001 (user-not-active,
// user-not-found, InternalServerError).
const (
	seedV1LocalAuthFailed = `{"error": "LOCAL_AUTH_FAILED", "code": "400", "message": "Username or password is invalid"}`
	seedV1Deactivated     = `{"error": "USER_DEACTIVATED_ERROR", "code": "401", "message": "User is already deactivated"}`
	seedV1Inactive        = `{"error": "USER_ACCOUNT_INACTIVE", "code": "401", "message": "User account is inactive"}`
	seedV1UserNotFound    = `{"error": "USER_NOT_FOUND", "code": "404", "message": "User not found"}`
	seedV1InternalError   = `{"error": "INTERNAL_SERVER_ERROR", "code": "500", "message": "Internal server error"}`
)

// v1SeedCall sends body to a v1 path with the seed's x-site-context and the test API key.
func v1SeedCall(t *testing.T, base, method, path string, body any, kv ...string) response {
	t.Helper()
	h := with(http.Header{"X-Site-Context": {seedV1SiteContext}, "X-Api-Key": {testAPIKey}}, kv...)
	return call{method: method, path: v1Prefix + path, header: h, body: body}.do(t, base)
}

// v1Conforms decodes r (status 200) and checks it against the seed example.
func v1Conforms(t *testing.T, where string, r response, seed string) any {
	t.Helper()
	r.want(t, http.StatusOK)
	var got any
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("%s: %v: %s", where, err, r.body)
	}
	assertShape(t, where, got, example(t, seed))
	return got
}

// v1SameError checks that r is the seed's error example, status and every field.
func v1SameError(t *testing.T, where string, r response, status int, seed string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d; body %s", where, r.status, status, r.body)
		return
	}
	var got any
	if err := json.Unmarshal(r.body, &got); err != nil || !reflect.DeepEqual(got, example(t, seed)) {
		t.Errorf("%s: body %s, want the seed's %s", where, r.body, seed)
	}
}

func TestV1Conformance(t *testing.T) {
	_, base := newServer(t, testConfig())

	si := v1Conforms(t, "create local user", v1SeedCall(t, base, "POST", "/user/local", seedV1CreateUserRequest), seedV1SignIn).(map[string]any)
	if si["account"] != "1234abcd5678efgh9ijklmno" {
		t.Errorf("account %v, want the site context's", si["account"])
	}
	userID := si["userId"].(string)
	v1Conforms(t, "login", v1SeedCall(t, base, "POST", "/auth/local/login", `{"username": "user101", "password": "ABC123"}`), seedV1SignIn)
	si = v1Conforms(t, "refresh", v1SeedCall(t, base, "POST", "/auth/local/refresh", map[string]any{"refreshToken": si["refreshToken"]}), seedV1SignIn).(map[string]any)

	// Addresses: the seed request echoes as the seed example, except isValidated (the emulator
	// validates no address).
	addresses := "/user/" + userID + "/address"
	got := v1Conforms(t, "create address", v1SeedCall(t, base, "POST", addresses, seedV1AddressRequest), seedV1Addresses).([]any)
	echo := got[0].(map[string]any)
	addressID := echo["_id"].(string)
	delete(echo, "_id")
	want := example(t, seedV1Address).(map[string]any)
	want["isValidated"] = false
	if !reflect.DeepEqual(echo, want) {
		t.Errorf("created address %v, want the seed's %v", echo, want)
	}
	v1Conforms(t, "list addresses", v1SeedCall(t, base, "GET", addresses, nil), seedV1Addresses)
	v1Conforms(t, "list addresses by kind", v1SeedCall(t, base, "GET", addresses+"?kind=Business", nil), seedV1Addresses)
	v1Conforms(t, "get address", v1SeedCall(t, base, "GET", addresses+"/"+addressID, nil), seedV1Addresses)
	v1Conforms(t, "update address", v1SeedCall(t, base, "PUT", addresses+"/"+addressID, seedV1AddressRequest), seedV1Addresses)
	v1Conforms(t, "unset default address", v1SeedCall(t, base, "POST", addresses+"/"+addressID+"/unset", nil), seedV1Addresses)
	v1Conforms(t, "set default address", v1SeedCall(t, base, "POST", addresses+"/"+addressID+"/set", nil), seedV1Addresses)
	second := v1Conforms(t, "create address", v1SeedCall(t, base, "POST", addresses, seedV1AddressRequest), seedV1Addresses).([]any)
	secondID := second[1].(map[string]any)["_id"].(string)
	v1Conforms(t, "delete address", v1SeedCall(t, base, "DELETE", addresses+"/"+secondID, nil), seedV1Addresses)

	v1Conforms(t, "get user", v1SeedCall(t, base, "GET", "/user/"+userID, nil, "Authorization", "Bearer "+si["accessToken"].(string)), seedV1User)

	reset := v1Conforms(t, "reset password", v1SeedCall(t, base, "PATCH", "/auth/local/reset", `{"username": "user101"}`), seedV1ResetToken).(map[string]any)
	v1Conforms(t, "update password", v1SeedCall(t, base, "PATCH", "/auth/password",
		map[string]any{"userId": userID, "resetToken": reset["token"], "newPassword": "ABC123"}), seedV1User)
	reset = v1SeedCall(t, base, "PATCH", "/auth/local/reset", `{"username": "user101"}`).want(t, http.StatusOK).object(t)
	v1Conforms(t, "change password", v1SeedCall(t, base, "PATCH", "/auth/change-password",
		map[string]any{"userId": userID, "resetToken": reset["token"], "newPassword": "ABC123"}), seedV1User)
	v1Conforms(t, "update username", v1SeedCall(t, base, "PATCH", "/user/"+userID+"/username", `{"oldUsername": "user101", "newUsername": "user202"}`), seedV1User)

	// The documented errors, word for word.
	v1SameError(t, "login, wrong password", v1SeedCall(t, base, "POST", "/auth/local/login", `{"username": "user202", "password": "nope"}`), 400, seedV1LocalAuthFailed)
	v1SameError(t, "refresh, invalid token", v1SeedCall(t, base, "POST", "/auth/local/refresh", `{"refreshToken": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjYxZjIyMTU4..."}`), 400, seedV1LocalAuthFailed)
	v1SameError(t, "reset, unknown user", v1SeedCall(t, base, "PATCH", "/auth/local/reset", `{"username": "user101"}`), 404, seedV1UserNotFound)
	v1SameError(t, "get user, unknown user", v1SeedCall(t, base, "GET", "/user/6169b2d892a5f30009d76480", nil, "Authorization", si["accessToken"].(string)), 404, seedV1UserNotFound)
	rt := v1SeedCall(t, base, "POST", "/auth/local/login", `{"username": "user202", "password": "ABC123"}`).want(t, http.StatusOK).object(t)["refreshToken"]
	v1PatchUser(t, base, "user202", map[string]any{"active": false})
	v1SameError(t, "login, deactivated", v1SeedCall(t, base, "POST", "/auth/local/login", `{"username": "user202", "password": "ABC123"}`), 401, seedV1Deactivated)
	v1SameError(t, "refresh, deactivated", v1SeedCall(t, base, "POST", "/auth/local/refresh", map[string]any{"refreshToken": rt}), 401, seedV1Deactivated)
	v1SameError(t, "reset, deactivated", v1SeedCall(t, base, "PATCH", "/auth/local/reset", `{"username": "user202"}`), 401, seedV1Inactive)
	addFault(t, base, Fault{Endpoint: "v1.reset", Status: 500})
	v1SameError(t, "reset, server error", v1SeedCall(t, base, "PATCH", "/auth/local/reset", `{"username": "user202"}`), 500, seedV1InternalError)

	t.Run("guest", func(t *testing.T) {
		_, base := newServer(t, testConfig())
		v1Conforms(t, "create guest user", v1SeedCall(t, base, "POST", "/user/guest", seedV1CreateUserRequest), seedV1SignIn)
	})

	t.Run("schema shapes", func(t *testing.T) {
		cfg := testConfig()
		cfg.SchemaShapes = true
		_, base := newServer(t, cfg)
		si := v1Conforms(t, "create local user", v1SeedCall(t, base, "POST", "/user/local", seedV1CreateUserRequest), seedV1SignInSchema).(map[string]any)
		v1Conforms(t, "login", v1SeedCall(t, base, "POST", "/auth/local/login", `{"username": "user101", "password": "ABC123"}`), seedV1SignInSchema)
		v1Conforms(t, "refresh", v1SeedCall(t, base, "POST", "/auth/local/refresh", map[string]any{"refreshToken": si["refreshToken"]}), seedV1SignInSchema)
	})
}
