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
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
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

// Encoding: one format byte (2), the version as 20 zero-padded decimal digits (so that the
// Redis compare-and-set script reads it without decoding the rest), LastSeen, the identity
// fields, and the sealed tokens, in binary: strings and byte strings length-prefixed (uvarint),
// times as Unix nanoseconds (varint; 0 for the zero time). Decoding is a few hundred
// nanoseconds: it runs on every request.
//
// The identity fields (everything but the version and LastSeen, which Touch rewrites without the
// keys) are authenticated with the tokens: they are part of the seal's additional data, with the
// store key. A record whose user, account, roles, claims or times were edited in the store, or
// that was moved under another key, does not open.
const (
	encodingV2   = 2
	versionWidth = 20
)

// record is the stored form of a Session: no ID, tokens sealed.
type record struct {
	Version       uint64
	UserID        string
	Account       string
	Dialect       string
	Name          string
	Roles         []string
	Tokens        []byte // sealed tokens
	AccessExpiry  time.Time
	RefreshExpiry time.Time
	Created       time.Time
	LastSeen      time.Time
	Deadline      time.Time
	Claims        map[string]string
}

// encode returns the stored form of s, its tokens sealed under kr's first key with the store
// key and the identity fields as additional data.
func encode(s *Session, kr *KeyRing) ([]byte, error) {
	var pt []byte
	pt = appendString(pt, s.AccessToken)
	pt = appendString(pt, s.RefreshToken)
	r := record{
		Version: s.Version, UserID: s.UserID, Account: s.Account, Dialect: s.Dialect,
		Name: s.Name, Roles: s.Roles,
		AccessExpiry: s.AccessExpiry, RefreshExpiry: s.RefreshExpiry,
		Created: s.Created, LastSeen: s.LastSeen, Deadline: s.Deadline, Claims: s.Claims,
	}
	r.Tokens = kr.Seal(pt, r.additionalData(StoreKey(s.ID)))
	clear(pt)
	return r.marshal()
}

// additionalData is what the seal authenticates besides the tokens.
func (r *record) additionalData(storeKey string) []byte {
	return r.appendIdentity([]byte(storeKey))
}

// appendIdentity appends the identity fields, deterministically (claims sorted).
func (r *record) appendIdentity(b []byte) []byte {
	for _, f := range []string{r.UserID, r.Account, r.Dialect, r.Name} {
		b = appendString(b, f)
	}
	b = binary.AppendUvarint(b, uint64(len(r.Roles)))
	for _, role := range r.Roles {
		b = appendString(b, role)
	}
	for _, t := range []time.Time{r.AccessExpiry, r.RefreshExpiry, r.Created, r.Deadline} {
		b = appendTime(b, t)
	}
	b = binary.AppendUvarint(b, uint64(len(r.Claims)))
	for _, k := range slices.Sorted(maps.Keys(r.Claims)) {
		b = appendString(appendString(b, k), r.Claims[k])
	}
	return b
}

func (r *record) marshal() ([]byte, error) {
	b := make([]byte, 0, 128+len(r.Tokens))
	b = append(b, encodingV2)
	b = fmt.Appendf(b, "%0*d", versionWidth, r.Version)
	b = appendTime(b, r.LastSeen)
	b = r.appendIdentity(b)
	return appendString(b, string(r.Tokens)), nil
}

func appendTime(b []byte, t time.Time) []byte {
	var n int64
	if !t.IsZero() {
		n = t.UnixNano()
	}
	return binary.AppendVarint(b, n)
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// reader decodes the binary fields; the first failure sticks.
type reader struct {
	b   []byte
	bad bool
}

func (d *reader) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.bad = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *reader) bytes() []byte {
	n := d.uvarint()
	if d.bad || n > uint64(len(d.b)) {
		d.bad = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *reader) string() string { return string(d.bytes()) }

func (d *reader) time() time.Time {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.bad = true
		return time.Time{}
	}
	d.b = d.b[n:]
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v).UTC()
}

// count reads a number of items, each at least one byte long.
func (d *reader) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.bad = true
		return 0
	}
	return int(n)
}

// parseRecord decodes a stored record without opening its tokens.
func parseRecord(b []byte) (*record, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrUnreadable)
	}
	if b[0] != encodingV2 {
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrUnreadable, b[0])
	}
	if len(b) < 1+versionWidth {
		return nil, fmt.Errorf("%w: truncated", ErrUnreadable)
	}
	version, err := strconv.ParseUint(string(b[1:1+versionWidth]), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed version", ErrUnreadable)
	}
	d := &reader{b: b[1+versionWidth:]}
	r := &record{Version: version, LastSeen: d.time()}
	r.UserID, r.Account, r.Dialect, r.Name = d.string(), d.string(), d.string(), d.string()
	if n := d.count(); n > 0 {
		r.Roles = make([]string, n)
		for i := range r.Roles {
			r.Roles[i] = d.string()
		}
	}
	r.AccessExpiry, r.RefreshExpiry, r.Created, r.Deadline = d.time(), d.time(), d.time(), d.time()
	if n := d.count(); n > 0 {
		r.Claims = make(map[string]string, n)
		for range n {
			k := d.string()
			r.Claims[k] = d.string()
		}
	}
	r.Tokens = d.bytes()
	if d.bad || len(d.b) != 0 {
		return nil, fmt.Errorf("%w: malformed record", ErrUnreadable)
	}
	return r, nil
}

// session opens r's tokens and returns the session with this id.
func (r *record) session(id string, kr *KeyRing) (*Session, error) {
	pt, err := kr.Open(r.Tokens, r.additionalData(StoreKey(id)))
	if err != nil {
		return nil, fmt.Errorf("%w: tokens: %w", ErrUnreadable, err)
	}
	d := &reader{b: pt}
	access, refresh := d.string(), d.string()
	clear(pt)
	if d.bad || len(d.b) != 0 {
		return nil, fmt.Errorf("%w: tokens are malformed", ErrUnreadable) // no detail: it would quote plaintext
	}
	return &Session{
		ID: id, Version: r.Version, UserID: r.UserID, Account: r.Account, Dialect: r.Dialect,
		Name: r.Name, Roles: r.Roles, AccessToken: access, AccessExpiry: r.AccessExpiry,
		RefreshToken: refresh, RefreshExpiry: r.RefreshExpiry, Created: r.Created,
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
