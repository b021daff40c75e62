// Package sessions keeps sitegate's server-side sessions: the session record, its sealed
// encoding, and the Store interface with an in-memory and a Redis implementation.
//
// A session is named by a random ID that only the client holds (in a cookie or a handle). Stores
// key records by StoreKey(ID), a SHA-256 hash, so the contents of a store cannot be turned back
// into cookies, and the access and refresh tokens inside a record are sealed with AES-256-GCM
// under a KeyRing, bound to the store key.
package sessions

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Session is one signed-in user's server-side state.
type Session struct {
	// ID is the session's secret handle, the cookie value. It is never stored.
	ID string
	// Version is incremented by every successful Store.Save; see Store.Save.
	Version uint64

	UserID  string
	Account string
	// Dialect names the identity protocol that issued the tokens (fabric_v1, oauth2, ece).
	Dialect string
	Name    string
	Roles   []string

	// AccessToken and RefreshToken are sealed in storage, never stored in clear.
	AccessToken   string
	AccessExpiry  time.Time
	RefreshToken  string
	RefreshExpiry time.Time

	Created  time.Time
	LastSeen time.Time
	// Deadline is the absolute end of the session, whatever its activity.
	Deadline time.Time

	// Claims holds the identity claims that headers and placeholders need.
	Claims map[string]string
}

const idBytes = 32

// NewID returns a new session ID: 32 random bytes, base64url without padding.
func NewID() (string, error) {
	b := make([]byte, idBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating session id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// StoreKey returns the key under which the session with this ID is stored: the hex SHA-256 of
// the ID. It is the only form of the ID a store ever holds.
func StoreKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:])
}

// validID rejects IDs that cannot name a session, before any I/O. IDs come from clients.
func validID(id string) bool { return id != "" && len(id) <= 256 }

// Encoding: one version byte, then the JSON of record.
const encodingV1 = 1

// record is the stored form of a Session: no ID, tokens sealed. The Redis compare-and-set script
// reads the field "v".
type record struct {
	Version       uint64            `json:"v"`
	UserID        string            `json:"uid,omitempty"`
	Account       string            `json:"acct,omitempty"`
	Dialect       string            `json:"dia,omitempty"`
	Name          string            `json:"name,omitempty"`
	Roles         []string          `json:"roles,omitempty"`
	Tokens        []byte            `json:"tok"` // sealed tokens
	AccessExpiry  time.Time         `json:"aexp"`
	RefreshExpiry time.Time         `json:"rexp"`
	Created       time.Time         `json:"created"`
	LastSeen      time.Time         `json:"seen"`
	Deadline      time.Time         `json:"deadline"`
	Claims        map[string]string `json:"claims,omitempty"`
}

// tokens is the sealed plaintext.
type tokens struct {
	Access  string `json:"a,omitempty"`
	Refresh string `json:"r,omitempty"`
}

// encode returns the stored form of s, its tokens sealed under kr's first key with
// StoreKey(s.ID) as additional data.
func encode(s *Session, kr *KeyRing) ([]byte, error) {
	pt, err := json.Marshal(tokens{Access: s.AccessToken, Refresh: s.RefreshToken})
	if err != nil {
		return nil, fmt.Errorf("encoding session tokens: %w", err)
	}
	r := record{
		Version: s.Version, UserID: s.UserID, Account: s.Account, Dialect: s.Dialect,
		Name: s.Name, Roles: s.Roles, Tokens: kr.Seal(pt, []byte(StoreKey(s.ID))),
		AccessExpiry: s.AccessExpiry, RefreshExpiry: s.RefreshExpiry,
		Created: s.Created, LastSeen: s.LastSeen, Deadline: s.Deadline, Claims: s.Claims,
	}
	clear(pt)
	return r.marshal()
}

func (r *record) marshal() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encoding session: %w", err)
	}
	return append([]byte{encodingV1}, b...), nil
}

// parseRecord decodes a stored record without opening its tokens.
func parseRecord(b []byte) (*record, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrUnreadable)
	}
	if b[0] != encodingV1 {
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrUnreadable, b[0])
	}
	var r record
	if err := json.Unmarshal(b[1:], &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreadable, err)
	}
	return &r, nil
}

// session opens r's tokens and returns the session with this id.
func (r *record) session(id string, kr *KeyRing) (*Session, error) {
	pt, err := kr.Open(r.Tokens, []byte(StoreKey(id)))
	if err != nil {
		return nil, fmt.Errorf("%w: tokens: %w", ErrUnreadable, err)
	}
	var t tokens
	err = json.Unmarshal(pt, &t)
	clear(pt)
	if err != nil {
		return nil, fmt.Errorf("%w: tokens are malformed", ErrUnreadable) // no detail: it would quote plaintext
	}
	return &Session{
		ID: id, Version: r.Version, UserID: r.UserID, Account: r.Account, Dialect: r.Dialect,
		Name: r.Name, Roles: r.Roles, AccessToken: t.Access, AccessExpiry: r.AccessExpiry,
		RefreshToken: t.Refresh, RefreshExpiry: r.RefreshExpiry, Created: r.Created,
		LastSeen: r.LastSeen, Deadline: r.Deadline, Claims: r.Claims,
	}, nil
}

// decode is parseRecord followed by opening the tokens.
func decode(id string, b []byte, kr *KeyRing) (*Session, error) {
	r, err := parseRecord(b)
	if err != nil {
		return nil, err
	}
	return r.session(id, kr)
}
