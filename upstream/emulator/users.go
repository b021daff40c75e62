package emulator

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// user is a user as the emulator keeps it.
type user struct {
	id           string // 24-hex v1 user id
	uid          string // Okta-style user id (00u…), the OAuth2 uid claim
	fabricUserID string // UUID, the OAuth2 fabricUserId claim and the UMS id
	username     string
	password     string
	account      string
	userType     string // customer or guest
	first        string
	middle       string
	last         string
	email        string
	contact      string // UMS primaryContact
	roles        []string
	phone        json.RawMessage
	extra        json.RawMessage
	active       bool
	created      time.Time
	updated      time.Time
	lastLogin    time.Time
	addresses    []*address
}

var (
	errBadCredentials = errors.New("username or password is invalid")
	errUserExists     = errors.New("username is taken")
)

// addUser validates u and adds it. userType is customer or guest.
func (e *Emulator) addUser(u User, userType string) (*user, error) {
	if strings.TrimSpace(u.Username) == "" {
		return nil, errors.New("user: username is required")
	}
	if u.Password == "" {
		return nil, fmt.Errorf("user %q: password is required", u.Username)
	}
	if u.Account != "" && !validAccount(u.Account) {
		return nil, fmt.Errorf("user %q: account %q must be a 24-character identifier", u.Username, u.Account)
	}
	id := u.ID
	if id == "" {
		id = stableID(24, "user", u.Username)
	}
	email := u.Email
	if email == "" {
		email = u.Username
		if !strings.Contains(email, "@") {
			email += "@example.com"
		}
	}
	roles := u.Roles
	if len(roles) == 0 {
		roles = []string{userType}
	}
	now := e.now().UTC()
	nu := &user{
		id:           id,
		uid:          "00u" + stableID(17, "uid", id),
		fabricUserID: uuidFrom(stableID(32, "fabric", id)),
		username:     u.Username,
		password:     u.Password,
		account:      u.Account,
		userType:     userType,
		first:        u.FirstName,
		last:         u.LastName,
		email:        email,
		roles:        roles,
		phone:        json.RawMessage(`[]`),
		extra:        json.RawMessage(`{}`),
		active:       !u.Deactivated,
		created:      now,
		updated:      now,
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, dup := e.usernames[strings.ToLower(nu.username)]; dup {
		return nil, fmt.Errorf("user %q: %w", u.Username, errUserExists)
	}
	if _, dup := e.users[nu.id]; dup {
		return nil, fmt.Errorf("user %q: id %q is taken", u.Username, nu.id)
	}
	e.users[nu.id] = nu
	e.usernames[strings.ToLower(nu.username)] = nu
	return nu, nil
}

func uuidFrom(hex32 string) string {
	return hex32[:8] + "-" + hex32[8:12] + "-" + hex32[12:16] + "-" + hex32[16:20] + "-" + hex32[20:32]
}

// authenticate checks a username and password. It returns errBadCredentials for an unknown user
// or a wrong password alike, and errUserInactive for a deactivated user with the right password.
func (e *Emulator) authenticate(username, password string) (*user, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	u := e.usernames[strings.ToLower(username)]
	if u == nil || subtle.ConstantTimeCompare([]byte(u.password), []byte(password)) != 1 {
		return nil, errBadCredentials
	}
	if !u.active {
		return nil, errUserInactive
	}
	u.lastLogin = e.now().UTC()
	return u, nil
}

// userByID returns the user with id, or nil.
func (e *Emulator) userByID(id string) *user {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.users[id]
}

// userByName returns the user with username (case-insensitive), or nil.
func (e *Emulator) userByName(username string) *user {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.usernames[strings.ToLower(username)]
}

// fullName joins the parts of a user's name that are set.
func (u *user) fullName() string {
	return strings.Join(strings.Fields(u.first+" "+u.middle+" "+u.last), " ")
}
