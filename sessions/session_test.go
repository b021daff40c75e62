package sessions

import (
	"bytes"
	"encoding/base64"
	"errors"
	"reflect"
	"regexp"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func sampleSession(t *testing.T) *Session {
	t.Helper()
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	return &Session{
		ID: id, Version: 3, UserID: "u-1", Account: "5f689caa4216e7000750d1ef", Dialect: "oauth2",
		Name: "Ada", Roles: []string{"admin", "buyer"},
		AccessToken: "AT-" + id[:8], AccessExpiry: t0.Add(time.Hour),
		RefreshToken: "RT-" + id[:8], RefreshExpiry: t0.Add(24 * time.Hour),
		Created: t0, LastSeen: t0.Add(time.Minute), Deadline: t0.Add(12 * time.Hour),
		Claims: map[string]string{"email": "ada@example.com"},
	}
}

func TestNewID(t *testing.T) {
	a, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewID()
	if a == b {
		t.Fatal("two ids are equal")
	}
	raw, err := base64.RawURLEncoding.DecodeString(a)
	if err != nil || len(raw) != 32 {
		t.Fatalf("id %q: %d bytes, %v", a, len(raw), err)
	}
}

func TestStoreKey(t *testing.T) {
	// SHA-256("abc")
	if got := StoreKey("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("StoreKey = %s", got)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(StoreKey("x")) {
		t.Fatal("store key is not 64 hex digits")
	}
}

func TestEncoding(t *testing.T) {
	kr := mustRing(t, testKey(1))
	s := sampleSession(t)
	b, err := encode(s, kr)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != encodingV2 {
		t.Fatalf("version byte %d", b[0])
	}
	for _, secret := range []string{s.ID, s.AccessToken, s.RefreshToken} {
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("encoding contains %q in clear", secret)
		}
	}
	got, err := decode(s.ID, b, kr)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
	}

	// Identity fields edited in the store do not open; LastSeen, which Touch rewrites without
	// the keys, is not authenticated.
	for name, edit := range map[string]func(*record){
		"user":     func(r *record) { r.UserID = "u-2" },
		"account":  func(r *record) { r.Account = "614bacaa4a74a70009d69d33" },
		"roles":    func(r *record) { r.Roles = append(r.Roles, "admin") },
		"claims":   func(r *record) { r.Claims = map[string]string{"type": "admin"} },
		"deadline": func(r *record) { r.Deadline = r.Deadline.Add(time.Hour) },
		"expiry":   func(r *record) { r.AccessExpiry = r.AccessExpiry.Add(time.Hour) },
	} {
		r, err := parseRecord(b)
		if err != nil {
			t.Fatal(err)
		}
		edit(r)
		edited, _ := r.marshal()
		if _, err := decode(s.ID, edited, kr); !errors.Is(err, ErrUnreadable) {
			t.Errorf("%s edited: %v, want ErrUnreadable", name, err)
		}
	}
	r, _ := parseRecord(b)
	r.LastSeen = r.LastSeen.Add(time.Minute)
	touched, _ := r.marshal()
	if got, err := decode(s.ID, touched, kr); err != nil || !got.LastSeen.Equal(s.LastSeen.Add(time.Minute)) {
		t.Errorf("touched record: %v %v", got, err)
	}

	// A record copied under another session's key does not open.
	if _, err := decode("another-id", b, kr); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("decode under another id: %v, want ErrUnreadable", err)
	}
	for name, bad := range map[string][]byte{
		"unknown version": append([]byte{1}, b[1:]...),
		"empty":           nil,
		"truncated":       b[:len(b)-1],
		"trailing bytes":  append(bytes.Clone(b), 0),
		"short":           []byte("\x02{"),
		"bad version":     append([]byte("\x02x"), b[2:]...),
	} {
		if _, err := decode(s.ID, bad, kr); !errors.Is(err, ErrUnreadable) {
			t.Errorf("%s: %v, want ErrUnreadable", name, err)
		}
	}
	if _, err := decode(s.ID, append([]byte{1}, b[1:]...), kr); err == nil ||
		err.Error() != "session record unreadable: unknown encoding version 1" {
		t.Errorf("unknown version error: %v", err)
	}
}
