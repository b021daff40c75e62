package emulator

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// fabric Identity v1 ("Authentication v1"): seeds 000, 001 and 002 are the reference. Every
// endpoint checks, in this order, its credentials, the x-site-context header, the request body,
// and only then the users and tokens; every error is an APIError {error, code, message}.

const v1Prefix = "/api-commerceIdentity"

// v1ResetLifetime is the lifetime of reset-password tokens. [EMU] The seeds give none.
const v1ResetLifetime = time.Hour

// v1Access says which credentials a v1 endpoint accepts.
type v1Access int

const (
	v1APIKey         v1Access = iota // x-api-key, when the emulator is configured with one
	v1APIKeyOrBearer                 // x-api-key, or a v1 access token
	v1Bearer                         // a v1 access token, always
)

// v1Handler answers a v1 request whose credentials and x-site-context were checked: a value
// written as JSON with 200, or an error (see v1Fail).
type v1Handler func(r *http.Request, sc siteContext) (any, error)

func (e *Emulator) v1Routes() {
	for _, ep := range []struct {
		pattern, name string
		access        v1Access
		h             v1Handler
	}{
		{"POST /auth/local/login", "v1.login", v1APIKey, e.v1Login},
		{"POST /auth/local/refresh", "v1.refresh", v1APIKey, e.v1Refresh},
		{"PATCH /auth/local/reset", "v1.reset", v1APIKeyOrBearer, e.v1Reset},
		{"PATCH /auth/password", "v1.update_password", v1APIKey, e.v1Password(true)},
		{"PATCH /auth/change-password", "v1.change_password", v1APIKey, e.v1Password(false)},
		{"POST /user/local", "v1.create_local_user", v1APIKey, e.v1CreateUser("customer")},
		{"POST /user/guest", "v1.create_guest_user", v1APIKey, e.v1CreateUser("guest")},
		{"GET /user/{userId}", "v1.get_user", v1Bearer, e.v1GetUser},
		{"PATCH /user/{userId}/username", "v1.update_username", v1APIKeyOrBearer, e.v1UpdateUsername},
		{"GET /user/{userId}/address", "v1.list_addresses", v1APIKey, e.v1ListAddresses},
		{"POST /user/{userId}/address", "v1.create_address", v1APIKey, e.v1CreateAddress},
		{"GET /user/{userId}/address/{addressId}", "v1.get_address", v1APIKey, e.v1GetAddress},
		{"PUT /user/{userId}/address/{addressId}", "v1.update_address", v1APIKey, e.v1UpdateAddress},
		{"DELETE /user/{userId}/address/{addressId}", "v1.delete_address", v1APIKey, e.v1DeleteAddress},
		{"POST /user/{userId}/address/{addressId}/set", "v1.set_default_address", v1APIKey, e.v1SetDefault(true)},
		{"POST /user/{userId}/address/{addressId}/unset", "v1.unset_default_address", v1APIKey, e.v1SetDefault(false)},
	} {
		method, path, _ := strings.Cut(ep.pattern, " ")
		e.route(method+" "+v1Prefix+path, ep.name, dialectV1, e.v1Serve(ep.access, ep.h))
	}
}

// v1Serve checks the credentials, then x-site-context, then runs h and writes its answer.
func (e *Emulator) v1Serve(a v1Access, h v1Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var (
			sc  siteContext
			out any
		)
		err := e.v1Credentials(r, a)
		if err == nil {
			sc, err = parseSiteContext(r)
		}
		if err == nil {
			out, err = h(r, sc)
		}
		if err != nil {
			v1Fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// v1Error is an APIError a v1 endpoint answers with.
type v1Error struct {
	status        int
	code, message string
}

func (e *v1Error) Error() string { return e.message }

// The errors of the v1 endpoints. The first four are the seeds' examples, word for word.
var (
	errV1AuthFailed        = &v1Error{http.StatusBadRequest, "LOCAL_AUTH_FAILED", "Username or password is invalid"}
	errV1Deactivated       = &v1Error{http.StatusUnauthorized, "USER_DEACTIVATED_ERROR", "User is already deactivated"}
	errV1Inactive          = &v1Error{http.StatusUnauthorized, "USER_ACCOUNT_INACTIVE", "User account is inactive"}
	errV1UserNotFound      = &v1Error{http.StatusNotFound, "USER_NOT_FOUND", "User not found"}
	errV1UserExists        = &v1Error{http.StatusBadRequest, "USER_ALREADY_EXISTS", "User already exists"}
	errV1TokenNotFound     = &v1Error{http.StatusNotFound, "TOKEN_NOT_FOUND", "Token not found"}
	errV1TokenExpired      = &v1Error{http.StatusUnauthorized, "TOKEN_EXPIRED", "Token expired"}
	errV1InvalidToken      = &v1Error{http.StatusUnauthorized, "UNAUTHORIZED", "Invalid token"}
	errV1IncorrectPassword = &v1Error{http.StatusBadRequest, "INCORRECT_PASSWORD", "Incorrect password"}
	errV1AddressNotFound   = &v1Error{http.StatusNotFound, "ADDRESS_NOT_FOUND", "Address not found"}
	errV1NoAddresses       = &v1Error{http.StatusNotFound, "ADDRESSES_NOT_FOUND", "No addresses found"}
	// [EMU] The seeds document x-api-key but not its errors.
	errV1APIKeyMissing = &v1Error{http.StatusUnauthorized, "API_KEY_MISSING", "x-api-key header is required"}
	errV1APIKeyInvalid = &v1Error{http.StatusUnauthorized, "API_KEY_INVALID", "x-api-key is invalid"}
)

// v1Fail answers err: a v1Error as is, a bad request as 400 BAD_REQUEST, anything else as 500.
func v1Fail(w http.ResponseWriter, err error) {
	var (
		ve *v1Error
		br errBadRequest
	)
	switch {
	case errors.As(err, &ve):
		fail(w, dialectV1, ve.status, ve.code, ve.message)
	case errors.As(err, &br):
		fail(w, dialectV1, http.StatusBadRequest, "BAD_REQUEST", br.msg)
	default:
		failStatus(w, dialectV1, http.StatusInternalServerError)
	}
}

// v1Credentials checks the credentials that access a requires. [EMU] On an "API key or bearer"
// endpoint, a request with an Authorization header and no x-api-key is judged by its token, any
// other by its API key.
func (e *Emulator) v1Credentials(r *http.Request, a v1Access) error {
	key := r.Header.Get("x-api-key")
	if a == v1Bearer || (a == v1APIKeyOrBearer && key == "" && r.Header.Get("Authorization") != "") {
		_, err := e.check(bearer(r, true), kindV1Access)
		switch {
		case errors.Is(err, errTokenExpired):
			return errV1TokenExpired
		case err != nil:
			return errV1InvalidToken
		}
		return nil
	}
	switch {
	case e.cfg.APIKey == "":
		return nil
	case key == "":
		return errV1APIKeyMissing
	case subtle.ConstantTimeCompare([]byte(key), []byte(e.cfg.APIKey)) != 1:
		return errV1APIKeyInvalid
	}
	return nil
}

// v1Body is a request body that knows its required fields.
type v1Body interface{ validate() error }

// v1Decode decodes a JSON body into b and validates it.
func v1Decode(r *http.Request, b v1Body) error {
	if err := decodeJSON(r, b); err != nil {
		return err
	}
	return b.validate()
}

// v1InTenant reports whether u exists in the tenant of sc. [EMU] A user of another account does
// not exist there; a user seeded without an account belongs to every tenant.
func v1InTenant(u *user, sc siteContext) bool { return u.account == "" || u.account == sc.Account }

// v1Account is the account u signs in to.
func v1Account(u *user, sc siteContext) string {
	if u.account != "" {
		return u.account
	}
	return sc.Account
}

// v1User returns the user with id in the tenant of sc, or errV1UserNotFound.
func (e *Emulator) v1User(sc siteContext, id string) (*user, error) {
	u := e.userByID(id)
	if u == nil || !v1InTenant(u, sc) {
		return nil, errV1UserNotFound
	}
	return u, nil
}

// v1Name is a user's name as the seeds spell it.
type v1Name struct {
	First  string `json:"first"`
	Middle string `json:"middle"`
	Last   string `json:"last"`
}

// v1Roles renders role names: the seed examples' string ("customer", several joined with ","),
// or with SchemaShapes the schema's array.
func (e *Emulator) v1Roles(roles []string) any {
	if e.cfg.SchemaShapes {
		return slices.Clone(roles)
	}
	return strings.Join(roles, ",")
}

// --- Sign-in ---------------------------------------------------------------------------------

// v1SignInResponse is the seeds' SignInResponse.
type v1SignInResponse struct {
	ID           string `json:"_id"`
	UserID       string `json:"userId"`
	Roles        any    `json:"roles"`
	Name         any    `json:"name"`
	Account      string `json:"account"`
	UserType     string `json:"userType"`
	AccessToken  string `json:"accessToken"`
	RefreshToken string `json:"refreshToken"`
}

// v1SignIn mints a v1 access token for u and renders the SignInResponse. It answers with refresh
// when one is given (no rotation), else with a new refresh token of family expiring at refreshExp.
func (e *Emulator) v1SignIn(u *user, sc siteContext, family, refresh string, refreshExp time.Time) v1SignInResponse {
	account := v1Account(u, sc)
	e.mu.Lock()
	roles, userType, parts, full := slices.Clone(u.roles), u.userType, v1Name{u.first, u.middle, u.last}, u.fullName()
	e.mu.Unlock()

	// The claims of identity-protocols §2.2; the kind tells guests from registered users.
	kind := "REGISTERED"
	if userType == "guest" {
		kind = "GUEST"
	}
	roleClaims := make([]map[string]string, len(roles))
	for i, name := range roles {
		roleClaims[i] = map[string]string{"id": stableID(24, "role", name)}
	}
	now := e.now()
	exp := now.Add(e.cfg.AccessLifetime)
	access := e.mint(jwt.MapClaims{
		"id": u.id, "roles": roleClaims, "permissions": []string{},
		"accountid": account, "accountId": nil, "userType": map[string]string{"kind": kind},
		"issuer": "emulator", "iat": now.Unix(), "exp": exp.Unix(),
	}, token{kind: kindV1Access, userID: u.id, exp: exp, family: family})
	if refresh == "" {
		refresh = e.mint(jwt.MapClaims{"id": u.id, "iat": now.Unix(), "exp": refreshExp.Unix()},
			token{kind: kindV1Refresh, userID: u.id, exp: refreshExp, family: family})
	}

	var name any = full
	if e.cfg.SchemaShapes {
		name = parts
	}
	return v1SignInResponse{
		ID: stableID(32, randomString(16)), UserID: u.id, Roles: e.v1Roles(roles), Name: name,
		Account: account, UserType: userType, AccessToken: access, RefreshToken: refresh,
	}
}

type v1LoginBody struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

func (b *v1LoginBody) validate() error {
	return required("username", b.Username, "password", b.Password)
}

func (e *Emulator) v1Login(r *http.Request, sc siteContext) (any, error) {
	var b v1LoginBody
	if err := v1Decode(r, &b); err != nil {
		return nil, err
	}
	if u := e.userByName(b.Username); u != nil && !v1InTenant(u, sc) {
		return nil, errV1AuthFailed
	}
	u, err := e.authenticate(b.Username, b.Password)
	switch {
	case errors.Is(err, errUserInactive):
		return nil, errV1Deactivated
	case err != nil:
		return nil, errV1AuthFailed
	}
	return e.v1SignIn(u, sc, randomString(16), "", e.now().Add(e.cfg.RefreshLifetime)), nil
}

type v1RefreshBody struct {
	RefreshToken string `json:"refreshToken"`
}

func (b *v1RefreshBody) validate() error { return required("refreshToken", b.RefreshToken) }

// v1Refresh exchanges a refresh token. [EMU] An unexpired v1 access token is accepted too, as the
// public test code refreshes with one. Under rotation the new refresh token keeps the presented
// token's expiry, so refreshing never extends a login; without rotation the presented token is
// returned as is.
func (e *Emulator) v1Refresh(r *http.Request, sc siteContext) (any, error) {
	var b v1RefreshBody
	if err := v1Decode(r, &b); err != nil {
		return nil, err
	}
	kinds := []tokenKind{kindV1Refresh, kindV1Access}
	// Check before redeeming, so that a token shown to the wrong tenant is not used up.
	rec, err := e.check(b.RefreshToken, kinds...)
	var u *user
	if err == nil {
		if u, err = e.v1User(sc, rec.userID); err != nil {
			return nil, errV1AuthFailed
		}
		rec, err = e.redeem(b.RefreshToken, kinds...)
	}
	switch {
	case errors.Is(err, errUserInactive):
		return nil, errV1Deactivated
	case err != nil:
		return nil, errV1AuthFailed
	}
	keep := ""
	if e.cfg.KeepRefreshTokens {
		keep = b.RefreshToken
	}
	return e.v1SignIn(u, sc, rec.family, keep, rec.exp), nil
}

// --- Passwords -------------------------------------------------------------------------------

type v1ResetBody struct {
	Username string `json:"username"`
}

func (b *v1ResetBody) validate() error { return required("username", b.Username) }

// v1ResetToken is the seeds' reset-password token.
type v1ResetToken struct {
	Token      string `json:"token"`
	Kind       string `json:"kind"`
	ExpiresAt  string `json:"expiresAt"`
	IsRedeemed bool   `json:"isRedeemed"`
	UserID     string `json:"userId"`
	Name       v1Name `json:"name"`
	Email      string `json:"email"`
}

func (e *Emulator) v1Reset(r *http.Request, sc siteContext) (any, error) {
	var b v1ResetBody
	if err := v1Decode(r, &b); err != nil {
		return nil, err
	}
	u := e.userByName(b.Username)
	if u == nil || !v1InTenant(u, sc) {
		return nil, errV1UserNotFound
	}
	e.mu.Lock()
	active, name, email := u.active, v1Name{u.first, u.middle, u.last}, u.email
	e.mu.Unlock()
	if !active {
		return nil, errV1Inactive
	}
	now := e.now()
	exp := now.Add(v1ResetLifetime)
	// [EMU] The token is a JWT, as in the seed example (public test code shows 24-hex values).
	t := e.mint(jwt.MapClaims{"id": u.id, "kind": "RESET_PASSWORD", "iat": now.Unix(), "exp": exp.Unix()},
		token{kind: kindReset, userID: u.id, exp: exp})
	return v1ResetToken{Token: t, Kind: "RESET_PASSWORD", ExpiresAt: timestamp(exp), UserID: u.id, Name: name, Email: email}, nil
}

// v1PasswordBody is the body of update password (tokenOnly) and change password. [EMU] Change
// password takes either the old password or a reset token (ambiguity A5).
type v1PasswordBody struct {
	UserID      string `json:"userId"`
	OldPassword string `json:"oldPassword"`
	ResetToken  string `json:"resetToken"`
	NewPassword string `json:"newPassword"`
	tokenOnly   bool
}

func (b *v1PasswordBody) validate() error {
	if b.tokenOnly {
		return required("userId", b.UserID, "resetToken", b.ResetToken, "newPassword", b.NewPassword)
	}
	if err := required("userId", b.UserID); err != nil {
		return err
	}
	if (b.OldPassword == "") == (b.ResetToken == "") {
		return badRequest("exactly one of oldPassword and resetToken is required")
	}
	return required("newPassword", b.NewPassword)
}

// v1Password sets a user's password on proof of a reset token or, unless tokenOnly, of the old
// password, and answers the User object.
func (e *Emulator) v1Password(tokenOnly bool) v1Handler {
	return func(r *http.Request, sc siteContext) (any, error) {
		b := v1PasswordBody{tokenOnly: tokenOnly}
		if err := v1Decode(r, &b); err != nil {
			return nil, err
		}
		u, err := e.v1User(sc, b.UserID)
		if err != nil {
			return nil, err
		}
		if b.ResetToken != "" {
			if err := e.v1RedeemReset(b.ResetToken, u.id); err != nil {
				return nil, err
			}
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if b.ResetToken == "" {
			if !u.active {
				return nil, errV1Inactive
			}
			if subtle.ConstantTimeCompare([]byte(u.password), []byte(b.OldPassword)) != 1 {
				return nil, errV1IncorrectPassword
			}
		}
		u.password = b.NewPassword
		u.updated = e.now().UTC()
		return e.v1UserObject(u, sc), nil
	}
}

// v1RedeemReset uses up a reset-password token issued to userID. Reset tokens are single-use
// whatever the refresh-token rotation setting, and a second use is not refresh-token reuse, so
// they are marked used here rather than through redeem.
func (e *Emulator) v1RedeemReset(raw, userID string) error {
	rec, err := e.check(raw, kindReset)
	switch {
	case errors.Is(err, errTokenExpired):
		return errV1TokenExpired
	case errors.Is(err, errUserInactive):
		return errV1Inactive
	case err != nil || rec.userID != userID:
		return errV1TokenNotFound
	}
	k, _ := e.key(raw)
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.tokens[k]
	if t == nil || t.used || t.revoked {
		return errV1TokenNotFound
	}
	t.used = true
	return nil
}

// --- Users -----------------------------------------------------------------------------------

// v1UserResponse is the seeds' User object.
type v1UserResponse struct {
	IsActive         bool             `json:"isActive"`
	RegistrationDate string           `json:"registrationDate"`
	ExpiryDate       string           `json:"expiryDate"`
	Roles            any              `json:"roles"`
	Name             v1Name           `json:"name"`
	Phone            json.RawMessage  `json:"phone"`
	Email            string           `json:"email"`
	Extra            json.RawMessage  `json:"extra"`
	RegistrationSite string           `json:"registrationSite"`
	Account          string           `json:"account"`
	UserID           string           `json:"userId"`
	Address          []address        `json:"address"`
	Provider         []v1UserProvider `json:"provider"`
	CreatedAt        string           `json:"createdAt"`
	UpdatedAt        string           `json:"updatedAt"`
}

type v1UserProvider struct {
	ID               string  `json:"id"`
	Name             string  `json:"name"`
	IsActive         bool    `json:"isActive"`
	RegistrationDate string  `json:"registrationDate"`
	LastLoginDate    *string `json:"lastLoginDate"` // null until the first sign-in
}

// v1UserObject renders u. Callers hold e.mu.
func (e *Emulator) v1UserObject(u *user, sc siteContext) v1UserResponse {
	var lastLogin *string
	if !u.lastLogin.IsZero() {
		s := timestamp(u.lastLogin)
		lastLogin = &s
	}
	created := timestamp(u.created)
	return v1UserResponse{
		IsActive:         u.active,
		RegistrationDate: created,
		// [EMU] Users do not expire: the date is far in the future.
		ExpiryDate: "9999-12-31T23:59:59.999Z",
		Roles:      e.v1Roles(u.roles),
		Name:       v1Name{u.first, u.middle, u.last},
		Phone:      u.phone,
		Email:      u.email,
		Extra:      u.extra,
		// [EMU] The seeds do not say what a registration site is.
		RegistrationSite: "emulator",
		Account:          v1Account(u, sc),
		UserID:           u.id,
		Address:          v1Addresses(u.addresses),
		Provider: []v1UserProvider{{
			ID: stableID(24, "provider", u.id), Name: "LOCAL", IsActive: u.active,
			RegistrationDate: created, LastLoginDate: lastLogin,
		}},
		CreatedAt: created,
		UpdatedAt: timestamp(u.updated),
	}
}

// v1NewUserBody is the body of create local user and create guest user.
type v1NewUserBody struct {
	User struct {
		Name  v1Name `json:"name"`
		Phone []struct {
			Number      string `json:"number"`
			CountryCode string `json:"countryCode"`
			Extenstion  string `json:"extenstion"` // sic, as the seeds spell it
			Kind        string `json:"kind"`
		} `json:"phone"`
		Email string         `json:"email"`
		Extra map[string]any `json:"extra"`
	} `json:"user"`
	Provider struct {
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"provider"`
	guest bool
}

func (b *v1NewUserBody) validate() error {
	if b.guest {
		return nil
	}
	return required("provider.username", b.Provider.Username, "provider.password", b.Provider.Password)
}

// v1CreateUser creates a user of userType (customer or guest) in the tenant of x-site-context and
// signs it in. [EMU] A guest needs no provider: a username and password are generated.
func (e *Emulator) v1CreateUser(userType string) v1Handler {
	return func(r *http.Request, sc siteContext) (any, error) {
		b := v1NewUserBody{guest: userType == "guest"}
		if err := v1Decode(r, &b); err != nil {
			return nil, err
		}
		username, password := b.Provider.Username, b.Provider.Password
		if strings.TrimSpace(username) == "" {
			username = "guest-" + stableID(16, randomString(16))
		}
		if password == "" {
			password = randomString(24)
		}
		u, err := e.addUser(User{
			Username: username, Password: password, Account: sc.Account,
			ID:        stableID(24, "user", randomString(16)), // random: usernames can change hands
			FirstName: b.User.Name.First, LastName: b.User.Name.Last, Email: b.User.Email,
		}, userType)
		switch {
		case errors.Is(err, errUserExists):
			return nil, errV1UserExists
		case err != nil:
			return nil, err // the body was validated: a 500
		}
		phone, _ := json.Marshal(b.User.Phone)
		extra, _ := json.Marshal(b.User.Extra)
		e.mu.Lock()
		u.middle = b.User.Name.Middle
		if b.User.Phone != nil {
			u.phone = phone
		}
		if b.User.Extra != nil {
			u.extra = extra
		}
		u.lastLogin = u.created
		e.mu.Unlock()
		return e.v1SignIn(u, sc, randomString(16), "", e.now().Add(e.cfg.RefreshLifetime)), nil
	}
}

func (e *Emulator) v1GetUser(r *http.Request, sc siteContext) (any, error) {
	u, err := e.v1User(sc, r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.v1UserObject(u, sc), nil
}

type v1UsernameBody struct {
	OldUsername string `json:"oldUsername"`
	NewUsername string `json:"newUsername"`
}

func (b *v1UsernameBody) validate() error {
	for _, f := range []struct{ name, value string }{{"oldUsername", b.OldUsername}, {"newUsername", b.NewUsername}} {
		if n := utf8.RuneCountInString(f.value); n < 5 || n > 40 {
			return badRequest("%s must be 5 to 40 characters long", f.name)
		}
	}
	return nil
}

func (e *Emulator) v1UpdateUsername(r *http.Request, sc siteContext) (any, error) {
	var b v1UsernameBody
	if err := v1Decode(r, &b); err != nil {
		return nil, err
	}
	u, err := e.v1User(sc, r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !strings.EqualFold(u.username, b.OldUsername) {
		return nil, badRequest("oldUsername is not the user's username")
	}
	key := strings.ToLower(b.NewUsername)
	if other := e.usernames[key]; other != nil && other != u {
		return nil, errV1UserExists
	}
	delete(e.usernames, strings.ToLower(u.username))
	e.usernames[key] = u
	u.username = b.NewUsername
	u.updated = e.now().UTC()
	return e.v1UserObject(u, sc), nil
}

// --- Addresses -------------------------------------------------------------------------------

// address is a user's address, stored and answered in the seeds' shape. [EMU] The seeds show no
// id, but the address paths need one: _id, 24 hex.
type address struct {
	ID          string          `json:"_id"`
	Attention   string          `json:"attention,omitempty"`
	Address1    string          `json:"address1"`
	Address2    string          `json:"address2,omitempty"`
	Address3    string          `json:"address3,omitempty"`
	City        string          `json:"city"`
	State       string          `json:"state"`
	Country     string          `json:"country"`
	ZipCode     json.RawMessage `json:"zipCode"` // a string or a number, kept as the client sent it
	Company     string          `json:"company,omitempty"`
	Kind        string          `json:"kind,omitempty"`
	Phone       *addressPhone   `json:"phone,omitempty"`
	Name        *addressName    `json:"name,omitempty"`
	Email       string          `json:"email"`
	IsValidated bool            `json:"isValidated"`
	IsDefault   bool            `json:"isDefault"`
}

type addressPhone struct {
	Number string `json:"number"`
	Kind   string `json:"kind"`
}

type addressName struct {
	First string `json:"first"`
	Last  string `json:"last"`
}

// validate checks the fields a client must send.
func (a *address) validate() error {
	if err := required("address1", a.Address1, "city", a.City, "state", a.State, "country", a.Country); err != nil {
		return err
	}
	var zip any
	_ = json.Unmarshal(a.ZipCode, &zip)
	switch z := zip.(type) {
	case nil:
		return badRequest("zipCode is required")
	case string:
		if strings.TrimSpace(z) == "" {
			return badRequest("zipCode is required")
		}
	case float64:
	default:
		return badRequest("field \"zipCode\" must be of type string or number")
	}
	return required("email", a.Email)
}

// v1Addresses copies a user's addresses for an answer, which is encoded after e.mu is released.
// Callers hold e.mu. Only IsDefault is ever changed in place; an update stores a new address.
func v1Addresses(list []*address) []address {
	out := make([]address, len(list))
	for i, a := range list {
		out[i] = *a
	}
	return out
}

// v1AddressBody decodes an address sent by a client; the fields the server owns are dropped.
func v1AddressBody(r *http.Request) (address, error) {
	var a address
	if err := v1Decode(r, &a); err != nil {
		return address{}, err
	}
	a.ID, a.IsValidated, a.IsDefault = "", false, false
	return a, nil
}

func (e *Emulator) v1ListAddresses(r *http.Request, sc siteContext) (any, error) {
	u, err := e.v1User(sc, r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	kind := r.URL.Query().Get("kind")
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []address
	for _, a := range u.addresses {
		if kind == "" || strings.EqualFold(a.Kind, kind) {
			out = append(out, *a)
		}
	}
	if len(out) == 0 {
		return nil, errV1NoAddresses
	}
	return out, nil
}

// v1CreateAddress adds an address and answers the user's list; a user's first address becomes
// the default.
func (e *Emulator) v1CreateAddress(r *http.Request, sc siteContext) (any, error) {
	a, err := v1AddressBody(r)
	if err != nil {
		return nil, err
	}
	u, err := e.v1User(sc, r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	a.ID = stableID(24, "address", randomString(16))
	e.mu.Lock()
	defer e.mu.Unlock()
	a.IsDefault = len(u.addresses) == 0
	u.addresses = append(u.addresses, &a)
	u.updated = e.now().UTC()
	return v1Addresses(u.addresses), nil
}

// v1OnAddress finds address {addressId} of user {userId} and, holding e.mu, answers what fn
// returns for the user and the address's index. fn that changes the list also stamps the user.
func (e *Emulator) v1OnAddress(r *http.Request, sc siteContext, fn func(u *user, i int) []address) (any, error) {
	u, err := e.v1User(sc, r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	id := r.PathValue("addressId")
	e.mu.Lock()
	defer e.mu.Unlock()
	i := slices.IndexFunc(u.addresses, func(a *address) bool { return a.ID == id })
	if i < 0 {
		return nil, errV1AddressNotFound
	}
	return fn(u, i), nil
}

// v1GetAddress answers a one-element array, as the seed does.
func (e *Emulator) v1GetAddress(r *http.Request, sc siteContext) (any, error) {
	return e.v1OnAddress(r, sc, func(u *user, i int) []address { return []address{*u.addresses[i]} })
}

// v1UpdateAddress replaces an address's fields; its id, default and validation flags stay.
func (e *Emulator) v1UpdateAddress(r *http.Request, sc siteContext) (any, error) {
	a, err := v1AddressBody(r)
	if err != nil {
		return nil, err
	}
	return e.v1OnAddress(r, sc, func(u *user, i int) []address {
		old := u.addresses[i]
		a.ID, a.IsValidated, a.IsDefault = old.ID, old.IsValidated, old.IsDefault
		u.addresses[i] = &a
		u.updated = e.now().UTC()
		return v1Addresses(u.addresses)
	})
}

// v1DeleteAddress removes an address. [EMU] Deleting the default promotes none: a user may have
// no default, as after unset.
func (e *Emulator) v1DeleteAddress(r *http.Request, sc siteContext) (any, error) {
	return e.v1OnAddress(r, sc, func(u *user, i int) []address {
		u.addresses = slices.Delete(u.addresses, i, i+1)
		u.updated = e.now().UTC()
		return v1Addresses(u.addresses)
	})
}

// v1SetDefault makes an address the only default (set) or clears its default flag (unset).
func (e *Emulator) v1SetDefault(set bool) v1Handler {
	return func(r *http.Request, sc siteContext) (any, error) {
		return e.v1OnAddress(r, sc, func(u *user, i int) []address {
			for j, a := range u.addresses {
				if set || j == i {
					a.IsDefault = set && j == i
				}
			}
			u.updated = e.now().UTC()
			return v1Addresses(u.addresses)
		})
	}
}
