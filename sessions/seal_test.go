package sessions

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func mustRing(t *testing.T, keys ...[]byte) *KeyRing {
	t.Helper()
	kr, err := NewKeyRing(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestSealRoundTrip(t *testing.T) {
	kr := mustRing(t, testKey(1))
	ad := []byte(StoreKey("id-a"))
	pt := []byte("access-token-secret")
	a, b := kr.Seal(pt, ad), kr.Seal(pt, ad)
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal: nonce not random")
	}
	if bytes.Contains(a, pt) {
		t.Fatal("sealed data contains the plaintext")
	}
	got, err := kr.Open(a, ad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
}

func TestSealRejects(t *testing.T) {
	kr := mustRing(t, testKey(1))
	ad := []byte(StoreKey("id-a"))
	pt := []byte("refresh-token-secret")
	sealed := kr.Seal(pt, ad)
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 1
		return b
	}
	for name, tc := range map[string]struct {
		data, ad []byte
		want     error
	}{
		"tampered ciphertext":     {flip(len(sealed) - 20), ad, errSealAuth},
		"tampered tag":            {flip(len(sealed) - 1), ad, errSealAuth},
		"tampered nonce":          {flip(headerSize), ad, errSealAuth},
		"moved to another id":     {sealed, []byte(StoreKey("id-b")), errSealAuth},
		"no additional data":      {sealed, nil, errSealAuth},
		"unknown key fingerprint": {flip(1), ad, errSealKey},
		"unknown format":          {flip(0), ad, errSealFormat},
		"truncated header":        {sealed[:3], ad, errSealTruncated},
		"truncated body":          {sealed[:headerSize+10], ad, errSealTruncated},
		"empty":                   {nil, ad, errSealTruncated},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := kr.Open(tc.data, tc.ad)
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("Open = %q, %v; want %v", got, err, tc.want)
			}
			if strings.Contains(err.Error(), string(pt)) {
				t.Fatalf("error %q leaks the plaintext", err)
			}
		})
	}
	other := mustRing(t, testKey(2))
	if _, err := other.Open(sealed, ad); !errors.Is(err, errSealKey) {
		t.Fatalf("Open with another ring: %v, want %v", err, errSealKey)
	}
}

func TestKeyRotation(t *testing.T) {
	oldKey, newKey := testKey(1), testKey(2)
	ad := []byte(StoreKey("id"))
	old := mustRing(t, oldKey).Seal([]byte("old"), ad)

	rotated := mustRing(t, newKey, oldKey)
	if got, err := rotated.Open(old, ad); err != nil || string(got) != "old" {
		t.Fatalf("rotated ring opening an old seal: %q, %v", got, err)
	}
	fresh := rotated.Seal([]byte("new"), ad)
	if _, err := mustRing(t, oldKey).Open(fresh, ad); !errors.Is(err, errSealKey) {
		t.Fatalf("new seal opened by the old key alone: %v; want it sealed by the new key", err)
	}
	if got, err := mustRing(t, newKey).Open(fresh, ad); err != nil || string(got) != "new" {
		t.Fatalf("new key alone: %q, %v", got, err)
	}
}

func TestNewKeyRingErrors(t *testing.T) {
	for name, keys := range map[string][][]byte{
		"none":      nil,
		"short":     {make([]byte, 16)},
		"long":      {make([]byte, 33)},
		"empty":     {{}},
		"second":    {testKey(1), make([]byte, 31)},
		"duplicate": {testKey(1), testKey(2), testKey(1)},
	} {
		if _, err := NewKeyRing(keys...); err == nil {
			t.Errorf("%s: NewKeyRing succeeded", name)
		}
	}
	// The ring does not alias the caller's key.
	k := testKey(3)
	kr := mustRing(t, k)
	sealed := kr.Seal([]byte("x"), nil)
	clear(k)
	if _, err := kr.Open(sealed, nil); err != nil {
		t.Fatalf("ring depends on the caller's key slice: %v", err)
	}
}

func TestParseKey(t *testing.T) {
	key := make([]byte, KeySize)
	for i := range key {
		key[i] = byte(i*7 + 250) // exercises + / and - _ alphabets
	}
	for name, s := range map[string]string{
		"hex":            hex.EncodeToString(key),
		"hex upper":      strings.ToUpper(hex.EncodeToString(key)),
		"base64 std":     base64.StdEncoding.EncodeToString(key),
		"base64 raw std": base64.RawStdEncoding.EncodeToString(key),
		"base64 url":     base64.URLEncoding.EncodeToString(key),
		"base64 raw url": base64.RawURLEncoding.EncodeToString(key),
		"surrounded":     "  " + base64.StdEncoding.EncodeToString(key) + "\n",
	} {
		got, err := ParseKey(s)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: ParseKey = %x, %v", name, got, err)
		}
	}
	secret := "c2VjcmV0LXNlY3JldC1zZWNyZXQ" // base64 of 20 bytes
	for name, tc := range map[string]struct{ in, want string }{
		"empty":       {"  ", "session key is empty"},
		"short b64":   {secret, "session key decodes to 20 bytes, want 32"},
		"long hex":    {hex.EncodeToString(make([]byte, 33)), "session key decodes to 33 bytes, want 32"},
		"short hex":   {hex.EncodeToString(make([]byte, 31)), "session key decodes to 31 bytes, want 32"},
		"not encoded": {"not a key at all!", "session key (17 characters) is neither base64 nor hex"},
	} {
		_, err := ParseKey(tc.in)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: ParseKey error = %v, want %q", name, err, tc.want)
		}
		if err != nil && strings.TrimSpace(tc.in) != "" && strings.Contains(err.Error(), tc.in) {
			t.Errorf("%s: error %q repeats the input", name, err)
		}
	}
}
