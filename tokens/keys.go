package tokens

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

const (
	minRSABits = 2048
	maxRSABits = 8192 // larger keys make every verification a denial-of-service lever
	maxJWKs    = 100  // keys read from one JWKS; the rest are skipped
)

// signatureAlgs are the algorithms a key can be bound to. HS* and none are not among them: a
// shared secret never comes from a key set or a public key file.
var signatureAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// verifyKey is a public key usable for verification.
type verifyKey struct {
	kid string           // empty for static keys and JWKs without a kid
	alg string           // the JWK's alg when present: the one algorithm the key verifies
	key crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey, checked
	id  string           // kid, alg and DER of key: tells a removed key from a kept one
}

// accepts reports whether k may verify a token signed with alg: the key's type and curve fix
// its algorithm family, and a JWK alg narrows it to that one algorithm.
func (k *verifyKey) accepts(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	return keyAllows(k.key, alg)
}

// keyAllows reports whether a checked key of its type may verify alg: RSA keys RS* and PS*, an EC
// key the ES alg of its curve, Ed25519 EdDSA.
func keyAllows(key crypto.PublicKey, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return alg == curveAlg(k.Curve)
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// curveAlg is the ES algorithm of an EC curve, or "" for a curve we do not accept.
func curveAlg(c elliptic.Curve) string {
	switch c {
	case elliptic.P256():
		return "ES256"
	case elliptic.P384():
		return "ES384"
	case elliptic.P521():
		return "ES512"
	}
	return ""
}

// newVerifyKey checks key and returns it bound to kid and alg.
func newVerifyKey(kid, alg string, key crypto.PublicKey) (verifyKey, error) {
	key, err := checkPublicKey(key)
	if err != nil {
		return verifyKey{}, err
	}
	if alg != "" && !keyAllows(key, alg) {
		return verifyKey{}, fmt.Errorf("alg %s does not fit a %s key", alg, keyType(key))
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return verifyKey{}, fmt.Errorf("encoding key: %w", err)
	}
	return verifyKey{kid: kid, alg: alg, key: key, id: kid + "\x00" + alg + "\x00" + string(der)}, nil
}

// checkPublicKey returns key in the form the signing methods expect, or why it is refused.
func checkPublicKey(key crypto.PublicKey) (crypto.PublicKey, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return nil, errors.New("RSA key is empty")
		}
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return nil, fmt.Errorf("RSA key is %d bits, want %d to %d", bits, minRSABits, maxRSABits)
		}
		if k.E < 3 || k.E%2 == 0 {
			return nil, errors.New("RSA public exponent is invalid")
		}
		return k, nil
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return nil, errors.New("EC key is empty")
		}
		if curveAlg(k.Curve) == "" {
			return nil, fmt.Errorf("EC curve %s is not supported (want P-256, P-384 or P-521)", k.Curve.Params().Name)
		}
		b, err := k.Bytes()
		if err != nil {
			return nil, errors.New("EC key is not a point on its curve")
		}
		if _, err := ecdsa.ParseUncompressedPublicKey(k.Curve, b); err != nil {
			return nil, errors.New("EC key is not a point on its curve")
		}
		return k, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		return k, nil
	case *ed25519.PublicKey:
		if k == nil {
			return nil, errors.New("Ed25519 key is empty")
		}
		return checkPublicKey(*k)
	case nil:
		return nil, errors.New("key is nil")
	}
	return nil, fmt.Errorf("unsupported key type %T (want RSA, ECDSA or Ed25519)", key)
}

func keyType(key crypto.PublicKey) string {
	switch key.(type) {
	case *rsa.PublicKey:
		return "RSA"
	case *ecdsa.PublicKey:
		return "EC"
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", key)
}

// ParsePublicKeyPEM parses one PEM-encoded public key: a PKIX "PUBLIC KEY" block holding an RSA
// (at least 2048 bits), ECDSA (P-256, P-384, P-521) or Ed25519 key, or a PKCS #1 "RSA PUBLIC
// KEY" block. Private keys, certificates, several blocks and encrypted blocks are refused with an
// error that says so.
func ParsePublicKeyPEM(b []byte) (crypto.PublicKey, error) {
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if rest = bytes.TrimSpace(rest); len(rest) > 0 {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, errors.New("more than one PEM block: give one key per file")
		}
		return nil, errors.New("unexpected data after the PEM block")
	}
	if len(block.Headers) > 0 {
		return nil, errors.New("PEM block has headers: encrypted keys are not supported")
	}
	var (
		key crypto.PublicKey
		err error
	)
	switch block.Type {
	case "PUBLIC KEY":
		if key, err = x509.ParsePKIXPublicKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("parsing PKIX public key: %w", err)
		}
	case "RSA PUBLIC KEY":
		if key, err = x509.ParsePKCS1PublicKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("parsing PKCS #1 RSA public key: %w", err)
		}
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY":
		return nil, fmt.Errorf("PEM block is a private key (%s): give the public key", block.Type)
	case "CERTIFICATE":
		return nil, errors.New("PEM block is a certificate: give its public key (openssl x509 -pubkey -noout)")
	default:
		return nil, fmt.Errorf("PEM block type %q is not a public key", block.Type)
	}
	return checkPublicKey(key)
}

// jwk is the part of a JSON Web Key (RFC 7517, RFC 7518 §6, RFC 8037) we read.
type jwk struct {
	Kty    string   `json:"kty"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	Alg    string   `json:"alg"`
	Kid    string   `json:"kid"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	Crv    string   `json:"crv"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	D      string   `json:"d"` // private (RSA, EC, OKP): must never be published
	K      string   `json:"k"` // symmetric
}

// parseJWKS reads a JSON Web Key Set. Keys that cannot be used are skipped and described in
// skipped (their kid and why; a kid from our own key set is not secret); a document that is not
// a key set, or has no usable key, is an error.
func parseJWKS(b []byte) (keys []verifyKey, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, nil, errors.New("not a JSON Web Key Set")
	}
	if set.Keys == nil {
		return nil, nil, errors.New("not a JSON Web Key Set: no keys member")
	}
	for i, raw := range set.Keys {
		if i == maxJWKs {
			skipped = append(skipped, fmt.Sprintf("%d keys beyond the first %d", len(set.Keys)-maxJWKs, maxJWKs))
			break
		}
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: malformed JWK", i))
			continue
		}
		k, err := j.verifyKey()
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, j.Kid, err))
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, skipped, errors.New("no usable signing key in the key set")
	}
	return keys, skipped, nil
}

// verifyKey converts j. A key that is not for signatures returns an error too, so that it is
// reported as skipped.
func (j *jwk) verifyKey() (verifyKey, error) {
	switch {
	case j.Use != "" && j.Use != "sig":
		return verifyKey{}, fmt.Errorf("use %q is not sig", j.Use)
	case j.KeyOps != nil && !slices.Contains(j.KeyOps, "verify"):
		return verifyKey{}, errors.New("key_ops does not include verify")
	case j.D != "" || j.K != "":
		return verifyKey{}, errors.New("key set publishes private or symmetric key material")
	case j.Alg != "" && !slices.Contains(signatureAlgs, j.Alg):
		return verifyKey{}, fmt.Errorf("alg %q is not a supported signature algorithm", j.Alg)
	}
	var key crypto.PublicKey
	switch j.Kty {
	case "RSA":
		n, err := b64(j.N)
		if err != nil || len(n) == 0 || n[0] == 0 {
			return verifyKey{}, errors.New("RSA modulus n is malformed")
		}
		e, err := b64(j.E)
		if err != nil || len(e) == 0 || len(e) > 4 || e[0] == 0 {
			return verifyKey{}, errors.New("RSA exponent e is malformed")
		}
		key = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	case "EC":
		var curve elliptic.Curve
		switch j.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return verifyKey{}, fmt.Errorf("EC curve %q is not supported", j.Crv)
		}
		size := (curve.Params().BitSize + 7) / 8
		x, errX := b64(j.X)
		y, errY := b64(j.Y)
		if errX != nil || errY != nil || len(x) != size || len(y) != size {
			return verifyKey{}, errors.New("EC coordinates are malformed")
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, slices.Concat([]byte{4}, x, y))
		if err != nil {
			return verifyKey{}, errors.New("EC point is not on the curve")
		}
		key = pub
	case "OKP":
		if j.Crv != "Ed25519" {
			return verifyKey{}, fmt.Errorf("OKP curve %q is not supported", j.Crv)
		}
		x, err := b64(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return verifyKey{}, errors.New("Ed25519 key x is malformed")
		}
		key = ed25519.PublicKey(x)
	default:
		return verifyKey{}, fmt.Errorf("kty %q is not supported", j.Kty)
	}
	return newVerifyKey(j.Kid, j.Alg, key)
}

// b64 decodes a base64url JWK member. Padding is tolerated: the key set comes from our issuer.
func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.Strict().DecodeString(strings.TrimRight(s, "="))
}
