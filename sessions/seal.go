package sessions

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the length of a session key: AES-256.
const KeySize = 32

// Sealed data layout (format 1):
//
//	format (1 byte, = 1) | key fingerprint (4 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext and tag
//
// The fingerprint is the first 4 bytes of SHA-256("sitegate session key\x00" || key). It lets
// Open pick the key directly; 32 bits of a hash of a 256-bit random key reveal nothing useful
// about it. The format byte and fingerprint are authenticated along with the caller's
// additional data.
const (
	sealFormat = 1
	fpSize     = 4
	headerSize = 1 + fpSize
)

var (
	errSealTruncated = errors.New("sealed data is truncated")
	errSealFormat    = errors.New("sealed data has an unsupported format")
	errSealKey       = errors.New("sealed data names a key that is not in the key ring")
	errSealAuth      = errors.New("sealed data failed authentication")
)

// KeyRing seals with its first key and opens with any of its keys, which allows key rotation:
// put the new key first, keep the old ones until every record sealed with them has expired.
// A KeyRing is safe for concurrent use.
type KeyRing struct {
	keys []ringKey // keys[0] seals
}

type ringKey struct {
	fp   [fpSize]byte
	aead cipher.AEAD
}

// NewKeyRing returns a key ring over keys, each exactly KeySize bytes. The first key seals; all
// of them open. The keys are not retained: the ring keeps only the ciphers built from them.
func NewKeyRing(keys ...[]byte) (*KeyRing, error) {
	if len(keys) == 0 {
		return nil, errors.New("key ring needs at least one key")
	}
	kr := &KeyRing{keys: make([]ringKey, 0, len(keys))}
	for i, k := range keys {
		if len(k) != KeySize {
			return nil, fmt.Errorf("key %d is %d bytes, want %d", i+1, len(k), KeySize)
		}
		fp := fingerprint(k)
		for j, o := range kr.keys {
			if o.fp == fp {
				return nil, fmt.Errorf("key %d duplicates key %d", i+1, j+1)
			}
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCMWithRandomNonce(block)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		kr.keys = append(kr.keys, ringKey{fp: fp, aead: aead})
	}
	return kr, nil
}

func fingerprint(k []byte) (fp [fpSize]byte) {
	h := sha256.New()
	h.Write([]byte("sitegate session key\x00"))
	h.Write(k)
	copy(fp[:], h.Sum(nil))
	return fp
}

// Seal encrypts and authenticates plaintext with the ring's first key and a random nonce,
// binding ad (additional data, not stored) to the result: Open must be given the same ad.
func (kr *KeyRing) Seal(plaintext, ad []byte) []byte {
	k := kr.keys[0]
	out := make([]byte, headerSize, headerSize+len(plaintext)+k.aead.Overhead())
	out[0] = sealFormat
	copy(out[1:], k.fp[:])
	return k.aead.Seal(out, nil, plaintext, authData(out[:headerSize], ad))
}

// Open authenticates and decrypts data produced by Seal with any key of the ring and the same
// additional data. Its errors never contain key material or plaintext.
func (kr *KeyRing) Open(sealed, ad []byte) ([]byte, error) {
	if len(sealed) < headerSize {
		return nil, errSealTruncated
	}
	if sealed[0] != sealFormat {
		return nil, errSealFormat
	}
	hdr := sealed[:headerSize]
	for _, k := range kr.keys {
		if !bytes.Equal(k.fp[:], hdr[1:]) {
			continue
		}
		if len(sealed) < headerSize+k.aead.Overhead() {
			return nil, errSealTruncated
		}
		pt, err := k.aead.Open(nil, nil, sealed[headerSize:], authData(hdr, ad))
		if err != nil {
			return nil, errSealAuth
		}
		return pt, nil
	}
	return nil, errSealKey
}

func authData(hdr, ad []byte) []byte {
	return append(append(make([]byte, 0, len(hdr)+len(ad)), hdr...), ad...)
}

// ParseKey decodes a session key written as base64 (standard or URL alphabet, with or without
// padding) or hex. It must decode to exactly KeySize bytes. Errors never repeat the input.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("session key is empty")
	}
	// Hex first: a 32-byte key in base64 is 43 characters, or 44 ending in "=", never even-length
	// hex, so no valid key is ambiguous.
	var k []byte
	if b, err := hex.DecodeString(s); err == nil {
		k = b
	}
	if k == nil {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.Strict().DecodeString(s); err == nil {
				k = b
				break
			}
		}
	}
	if k == nil {
		return nil, fmt.Errorf("session key (%d characters) is neither base64 nor hex", len(s))
	}
	if len(k) != KeySize {
		return nil, fmt.Errorf("session key decodes to %d bytes, want %d", len(k), KeySize)
	}
	return k, nil
}
