package tokens

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func pemOf(t *testing.T, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkixDER(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParsePublicKeyPEM(t *testing.T) {
	rk, ek, dk := rsaKey(), ecKey(), edKey()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotAfter: time.Now().Add(time.Hour)}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ek.PublicKey, ek)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, err := x509.MarshalECPrivateKey(ek)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pemOf(t, "PUBLIC KEY", pkixDER(t, &rk.PublicKey))

	for _, tc := range []struct {
		name string
		in   []byte
		want string // error substring; empty: a key of type alg
		alg  string
	}{
		{"rsa pkix", rsaPEM, "", "RS256"},
		{"rsa pkcs1", pemOf(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rk.PublicKey)), "", "PS256"},
		{"ec p-256", pemOf(t, "PUBLIC KEY", pkixDER(t, &ek.PublicKey)), "", "ES256"},
		{"ec p-384", pemOf(t, "PUBLIC KEY", pkixDER(t, &p384.PublicKey)), "", "ES384"},
		{"ed25519", pemOf(t, "PUBLIC KEY", pkixDER(t, dk.Public())), "", "EdDSA"},
		{"text around the block", append(append([]byte("the key:\n"), rsaPEM...), "\n\n"...), "", "RS256"},
		{"empty", nil, "no PEM block found", ""},
		{"not PEM", []byte("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"), "no PEM block found", ""},
		{"two blocks", append(append([]byte{}, rsaPEM...), rsaPEM...), "more than one PEM block", ""},
		{"trailing data", append(append([]byte{}, rsaPEM...), "junk"...), "unexpected data after the PEM block", ""},
		{"private key", pemOf(t, "EC PRIVATE KEY", ecPriv), "private key (EC PRIVATE KEY)", ""},
		{"pkcs8 private key", pemOf(t, "PRIVATE KEY", ecPriv), "private key (PRIVATE KEY)", ""},
		{"certificate", pemOf(t, "CERTIFICATE", cert), "certificate", ""},
		{"unknown type", pemOf(t, "FOO", []byte{1}), `"FOO" is not a public key`, ""},
		{"encrypted", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}), "encrypted", ""},
		{"garbage DER", pemOf(t, "PUBLIC KEY", []byte{1, 2, 3}), "parsing PKIX public key", ""},
		{"garbage PKCS1", pemOf(t, "RSA PUBLIC KEY", []byte{1, 2, 3}), "parsing PKCS #1", ""},
		{"small RSA", pemOf(t, "PUBLIC KEY", pkixDER(t, &small.PublicKey)), "RSA key is 1024 bits, want 2048 to 8192", ""},
		{"P-224", pemOf(t, "PUBLIC KEY", pkixDER(t, &p224.PublicKey)), "EC curve P-224 is not supported", ""},
		{"X25519", pemOf(t, "PUBLIC KEY", pkixDER(t, x25519.PublicKey())), "unsupported key type *ecdh.PublicKey", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ParsePublicKeyPEM(tc.in)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !keyAllows(key, tc.alg) {
				t.Fatalf("%T does not verify %s", key, tc.alg)
			}
		})
	}
}

// TestKeyBinding checks which algorithms each kind of key verifies.
func TestKeyBinding(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.PublicKey
		alg  string // the JWK's
		ok   string // the algorithms it verifies
	}{
		{"rsa", &rsaKey().PublicKey, "", "RS256 RS384 RS512 PS256 PS384 PS512"},
		{"rsa bound to PS256", &rsaKey().PublicKey, "PS256", "PS256"},
		{"p-256", &ecKey().PublicKey, "", "ES256"},
		{"p-384", &p384.PublicKey, "", "ES384"},
		{"ed25519", edKey().Public(), "", "EdDSA"},
		{"ed25519 bound", edKey().Public(), "EdDSA", "EdDSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := newVerifyKey("kid", tc.alg, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range append(signatureAlgs, "HS256", "none") {
				if k.accepts(a) {
					got = append(got, a)
				}
			}
			if strings.Join(got, " ") != tc.ok {
				t.Fatalf("accepts %v, want %s", got, tc.ok)
			}
		})
	}
	if _, err := newVerifyKey("kid", "ES256", &rsaKey().PublicKey); err == nil {
		t.Fatal("an RSA key was bound to ES256")
	}
}

func TestParseJWKS(t *testing.T) {
	rsaJWK := func(kv ...any) map[string]any {
		m := jwkOf("k", "", &rsaKey().PublicKey)
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec := jwkOf("e", "", &ecKey().PublicKey)
	offCurve := jwkOf("e", "", &ecKey().PublicKey)
	y := mustDecode(t, offCurve["y"].(string))
	y[len(y)-1] ^= 1
	offCurve["y"] = enc(y)
	ed := jwkOf("d", "", edKey().Public())
	with := func(m map[string]any, kv ...any) map[string]any {
		out := map[string]any{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}

	for _, tc := range []struct {
		name string
		key  any
		want string // skip reason substring; empty: usable
	}{
		{"rsa", rsaJWK(), ""},
		{"rsa with use absent", rsaJWK("use", nil), ""},
		{"rsa with key_ops verify", rsaJWK("key_ops", []string{"verify"}), ""},
		{"rsa with padding", rsaJWK("n", jwkOf("k", "", &rsaKey().PublicKey)["n"].(string)+"=="), ""},
		{"ec", ec, ""},
		{"ed25519", ed, ""},
		{"use enc", rsaJWK("use", "enc"), `use "enc" is not sig`},
		{"key_ops encrypt", rsaJWK("key_ops", []string{"encrypt"}), "key_ops"},
		{"private exponent", rsaJWK("d", "AQAB"), "private"},
		{"oct", map[string]any{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}, "private or symmetric"},
		{"oct without k", map[string]any{"kty": "oct", "kid": "h"}, `kty "oct" is not supported`},
		{"alg HS256", rsaJWK("alg", "HS256"), `alg "HS256" is not a supported signature algorithm`},
		{"alg RSA-OAEP", rsaJWK("alg", "RSA-OAEP"), "not a supported signature algorithm"},
		{"alg ES256 on RSA", rsaJWK("alg", "ES256"), "does not fit a RSA key"},
		{"alg RS256 on EC", with(ec, "alg", "RS256"), "does not fit a EC key"},
		{"alg ES384 on P-256", with(ec, "alg", "ES384"), "does not fit"},
		{"small rsa", jwkOf("s", "", &small.PublicKey), "1024 bits"},
		{"rsa even exponent", rsaJWK("e", enc([]byte{2})), "exponent"},
		{"rsa exponent 1", rsaJWK("e", enc([]byte{1})), "exponent"},
		{"rsa huge exponent", rsaJWK("e", enc([]byte{1, 0, 0, 0, 1})), "exponent e is malformed"},
		{"rsa n missing", rsaJWK("n", nil), "modulus"},
		{"rsa n not base64url", rsaJWK("n", "a+b/"), "modulus"},
		{"ec off the curve", offCurve, "not on the curve"},
		{"ec short x", with(ec, "x", enc([]byte{1, 2, 3})), "coordinates"},
		{"ec P-224", with(ec, "crv", "P-224"), `curve "P-224"`},
		{"ec secp256k1", with(ec, "crv", "secp256k1"), "not supported"},
		{"okp X25519", with(ed, "crv", "X25519"), `curve "X25519"`},
		{"ed25519 short", with(ed, "x", enc(make([]byte, 31))), "Ed25519 key x"},
		{"kty missing", map[string]any{"kid": "x"}, `kty ""`},
		{"kty a number", map[string]any{"kty": 1}, "malformed JWK"},
		{"not an object", "key", "malformed JWK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := json.Marshal(map[string]any{"keys": []any{tc.key, rsaJWK("kid", "other")}})
			keys, skipped, err := parseJWKS(b)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if len(keys) != 2 || len(skipped) != 0 {
					t.Fatalf("keys %d, skipped %v", len(keys), skipped)
				}
				return
			}
			if len(keys) != 1 || len(skipped) != 1 || !strings.Contains(skipped[0], tc.want) {
				t.Fatalf("keys %d, skipped %v, want one skipped for %q", len(keys), skipped, tc.want)
			}
		})
	}

	for _, tc := range []struct{ name, doc, want string }{
		{"not JSON", "<html>", "not a JSON Web Key Set"},
		{"no keys member", `{"kid":"x"}`, "no keys member"},
		{"keys not an array", `{"keys":{}}`, "not a JSON Web Key Set"},
		{"empty", `{"keys":[]}`, "no usable signing key"},
		{"nothing usable", `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`, "no usable signing key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := parseJWKS([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}

	t.Run("at most 100 keys", func(t *testing.T) {
		many := make([]any, 150)
		for i := range many {
			many[i] = ed
		}
		b, _ := json.Marshal(map[string]any{"keys": many})
		keys, skipped, err := parseJWKS(b)
		if err != nil || len(keys) != maxJWKs || len(skipped) != 1 {
			t.Fatalf("keys %d, skipped %v, err %v", len(keys), skipped, err)
		}
	})
}

// TestStaticKeyChecks checks keys handed to Config.PublicKeys directly.
func TestStaticKeyChecks(t *testing.T) {
	bad := &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}
	edPtr := edKey().Public().(ed25519.PublicKey)
	for _, tc := range []struct {
		name string
		key  crypto.PublicKey
		want string
	}{
		{"ec off the curve", bad, "not a point on its curve"},
		{"ed25519 short", ed25519.PublicKey(make([]byte, 8)), "8 bytes"},
		{"rsa value", rsaKey().PublicKey, "unsupported key type rsa.PublicKey"},
		{"ed25519 pointer", &edPtr, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkPublicKey(tc.key)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
