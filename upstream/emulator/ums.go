package emulator

import (
	"crypto/subtle"
	"net/http"
	"net/mail"
	"strings"
)

// User APIs 2.0 (UMS) under /ums/v2: a signed-in user's self-service (seed 004,
// identity-protocols.md §5).

func (e *Emulator) umsRoutes() {
	e.route("GET /ums/v2/users/self", "ums.get_self", dialectUMS, e.umsAuth(e.umsGetSelf))
	e.route("PUT /ums/v2/users/self", "ums.update_self", dialectUMS, e.umsAuth(e.umsUpdateSelf))
	e.route("POST /ums/v2/auth/self/password", "ums.change_password", dialectUMS, e.umsAuth(e.umsChangePassword))
	e.route("POST /ums/v2/auth/forgot-password", "ums.forgot_password", dialectUMS, e.umsForgotPassword)
}

const umsForbidden = "User is not allowed to perform the action"

// umsAuth authenticates the bearer of a UMS request and hands its user id to h. OAuth2 user access
// tokens and v1 access tokens are both accepted (sitegate introspects v1 tokens at /users/self); a
// client_credentials token is not a user's and is forbidden.
func (e *Emulator) umsAuth(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec, err := e.check(bearer(r, false), kindOAuthAccess, kindV1Access, kindOAuthClient)
		switch {
		case err != nil:
			fail(w, dialectUMS, http.StatusUnauthorized, "UNAUTHORIZED", "Invalid token")
		case rec.kind == kindOAuthClient:
			fail(w, dialectUMS, http.StatusForbidden, "FORBIDDEN", umsForbidden)
		default:
			h(w, r, rec.userID)
		}
	}
}

func umsBadRequest(w http.ResponseWriter, err error) {
	fail(w, dialectUMS, http.StatusBadRequest, "BAD_REQUEST", err.Error())
}

// umsUser is the seed's "User Identity Object". GET spells the contact primarycontact and has
// accounts; PUT answers primaryContact and no accounts, as the seed's samples do.
type umsUser struct {
	ID                   string    `json:"id"`
	Status               string    `json:"status"`
	IsStaffUserFederated bool      `json:"isStaffUserFederated"`
	LoginID              string    `json:"loginId"`
	OrgID                string    `json:"orgId"`
	Type                 string    `json:"type"`
	Email                string    `json:"email"`
	PrimaryContactGET    *string   `json:"primarycontact,omitempty"`
	PrimaryContactPUT    *string   `json:"primaryContact,omitempty"`
	FirstName            string    `json:"firstName"`
	LastName             string    `json:"lastName"`
	Meta                 string    `json:"meta"`
	Accounts             *struct{} `json:"accounts,omitempty"`
	CreatedAt            string    `json:"createdAt"`
	UpdatedAt            string    `json:"updatedAt"`
	// DeletedAt is null for a user that is not deleted. The seed's example shows a timestamp
	// string; null is the one deliberate deviation, as no emulated user is ever deleted.
	DeletedAt *string `json:"deletedAt"`
}

// umsView renders u for GET (put false) or PUT. Callers hold e.mu.
func (u *user) umsView(put bool) umsUser {
	status := "active"
	if !u.active {
		status = "inactive"
	}
	v := umsUser{
		ID: u.fabricUserID, Status: status, LoginID: u.username, OrgID: u.account, Type: u.userType,
		Email: u.email, FirstName: u.first, LastName: u.last,
		// [EMU] meta is a string in the seed: the user's extra data (v1) as JSON text.
		Meta:      string(u.extra),
		CreatedAt: timestamp(u.created), UpdatedAt: timestamp(u.updated),
	}
	contact := u.contact
	if put {
		v.PrimaryContactPUT = &contact
	} else {
		// "For shoppers, accounts property will be empty."
		v.PrimaryContactGET, v.Accounts = &contact, &struct{}{}
	}
	return v
}

// umsGetSelf and the handlers below read e.users[id] unchecked: umsAuth has checked that the user
// exists, and users are never removed.
func (e *Emulator) umsGetSelf(w http.ResponseWriter, _ *http.Request, id string) {
	e.mu.Lock()
	v := e.users[id].umsView(false)
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, v)
}

// umsUpdate is the body of PUT /users/self; absent fields are left as they are.
type umsUpdate struct {
	LoginID        *string `json:"loginId"`
	Email          *string `json:"email"`
	FirstName      *string `json:"firstName"`
	LastName       *string `json:"lastName"`
	PrimaryContact *string `json:"primaryContact"`
}

func (e *Emulator) umsUpdateSelf(w http.ResponseWriter, r *http.Request, id string) {
	var body umsUpdate
	err := decodeJSON(r, &body)
	switch {
	case err != nil:
	case body.LoginID != nil && strings.TrimSpace(*body.LoginID) == "":
		err = badRequest("loginId must not be empty")
	case body.Email != nil && !isEmail(*body.Email):
		err = badRequest("email must be an email address")
	}
	if err != nil {
		umsBadRequest(w, err)
		return
	}
	v, err := e.updateSelf(id, body)
	if err != nil {
		fail(w, dialectUMS, http.StatusBadRequest, "USER_ALREADY_EXISTS", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func isEmail(s string) bool {
	a, err := mail.ParseAddress(s)
	return err == nil && a.Address == s
}

// updateSelf applies b to the user (a new loginId only if no other user has it) and returns the
// PUT view, all under e.mu.
func (e *Emulator) updateSelf(id string, b umsUpdate) (umsUser, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	u := e.users[id]
	if b.LoginID != nil {
		key := strings.ToLower(*b.LoginID)
		if other := e.usernames[key]; other != nil && other != u {
			return umsUser{}, badRequest("loginId is taken")
		}
		delete(e.usernames, strings.ToLower(u.username))
		u.username, e.usernames[key] = *b.LoginID, u
	}
	for _, f := range []struct{ dst, src *string }{
		{&u.email, b.Email}, {&u.first, b.FirstName}, {&u.last, b.LastName}, {&u.contact, b.PrimaryContact},
	} {
		if f.src != nil {
			*f.dst = *f.src
		}
	}
	u.updated = e.now().UTC()
	return u.umsView(true), nil
}

func (e *Emulator) umsChangePassword(w http.ResponseWriter, r *http.Request, id string) {
	var body struct {
		OldPassword string `json:"oldPassword"`
		NewPassword string `json:"newPassword"`
	}
	_, err := parseSiteContext(r)
	if err == nil {
		err = decodeJSON(r, &body)
	}
	if err == nil {
		err = required("oldPassword", body.OldPassword, "newPassword", body.NewPassword)
	}
	if err != nil {
		umsBadRequest(w, err)
		return
	}
	e.mu.Lock()
	u := e.users[id]
	ok := subtle.ConstantTimeCompare([]byte(u.password), []byte(body.OldPassword)) == 1
	if ok {
		u.password, u.updated = body.NewPassword, e.now().UTC()
	}
	e.mu.Unlock()
	if !ok {
		fail(w, dialectUMS, http.StatusForbidden, "FORBIDDEN", umsForbidden)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"code": "PASSWORD_CHANGED", "message": "Password changed successfully."})
}

// umsForgotPassword answers the same whether or not the user exists, so that it cannot be used to
// find out who has an account. The emulator sends no email.
func (e *Emulator) umsForgotPassword(w http.ResponseWriter, r *http.Request) {
	var body struct {
		LoginID string `json:"loginId"`
	}
	err := decodeJSON(r, &body)
	if err == nil {
		err = required("loginId", body.LoginID)
	}
	if err != nil {
		umsBadRequest(w, err)
		return
	}
	// The seed answers with the key "success", not "code".
	writeJSON(w, http.StatusOK, map[string]string{
		"success": "FORGOT_PASSWORD_INITIATED",
		"message": "If user was found a reset link will be sent to the provided email",
	})
}
