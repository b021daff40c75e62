package emulator

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"sync"
)

// signingKey is one RSA key with its RFC 7638 thumbprint as kid.
type signingKey struct {
	kid string
	key *rsa.PrivateKey
}

// keyRing holds the key that signs new tokens (the first) and the older keys still published
// in the JWKS and accepted for verification.
type keyRing struct {
	keys []signingKey
}

var (
	processKeyOnce sync.Once
	processKey     signingKey
	processKeyErr  error
)

// defaultKeyRing starts every emulator of the process with the same generated key: generating a
// 2048-bit RSA key takes long enough to matter in tests and config reloads. Rotation through the
// control API gives one emulator a key of its own.
func defaultKeyRing() (*keyRing, error) {
	processKeyOnce.Do(func() { processKey, processKeyErr = newSigningKey() })
	if processKeyErr != nil {
		return nil, processKeyErr
	}
	return &keyRing{keys: []signingKey{processKey}}, nil
}

func newSigningKey() (signingKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return signingKey{}, fmt.Errorf("generating RSA key: %w", err)
	}
	return signingKey{kid: thumbprint(&k.PublicKey), key: k}, nil
}

// thumbprint is the RFC 7638 JWK thumbprint of an RSA public key, base64url without padding.
func thumbprint(pub *rsa.PublicKey) string {
	// Members in lexicographic order, no whitespace, as RFC 7638 §3 requires.
	canonical := fmt.Sprintf(`{"e":"%s","kty":"RSA","n":"%s"}`, b64(big.NewInt(int64(pub.E)).Bytes()), b64(pub.N.Bytes()))
	sum := sha256.Sum256([]byte(canonical))
	return b64(sum[:])
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signer returns the key that signs new tokens.
func (k *keyRing) signer() signingKey { return k.keys[0] }

// public returns the verification key for kid.
func (k *keyRing) public(kid string) (crypto.PublicKey, bool) {
	for _, s := range k.keys {
		if s.kid == kid {
			return &s.key.PublicKey, true
		}
	}
	return nil, false
}

// rotate makes next the signing key. The previous keys stay published unless dropOld is set, in
// which case tokens they signed stop verifying.
func (k *keyRing) rotate(next signingKey, dropOld bool) {
	if dropOld {
		k.keys = []signingKey{next}
		return
	}
	k.keys = append([]signingKey{next}, k.keys...)
}

// jwks renders the key set as a JSON Web Key Set.
func (k *keyRing) jwks() json.RawMessage {
	type jwk struct {
		Kty string `json:"kty"`
		Alg string `json:"alg"`
		Use string `json:"use"`
		Kid string `json:"kid"`
		N   string `json:"n"`
		E   string `json:"e"`
	}
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	for _, s := range k.keys {
		pub := s.key.PublicKey
		set.Keys = append(set.Keys, jwk{
			Kty: "RSA", Alg: "RS256", Use: "sig", Kid: s.kid,
			N: b64(pub.N.Bytes()), E: b64(big.NewInt(int64(pub.E)).Bytes()),
		})
	}
	b, _ := json.Marshal(set)
	return b
}
