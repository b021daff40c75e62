package tokens

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestAdversarial runs hostile and malformed tokens against a validator whose key set holds an
// RSA key without alg (rsa1), an RSA key bound to PS256 (ps1), a P-256 key (ec1) and an Ed25519
// key (ed1). Headers that name keys (jku, x5u, jwk, x5c) point at an attacker's key server,
// which must never be called.
func TestAdversarial(t *testing.T) {
	clk := newClock()
	now := clk.Now()
	rk, rk2, ek, dk := rsaKey(), rsaKeys()[1], ecKey(), edKey()
	keys := newKeyServer(t,
		jwkOf("rsa1", "", &rk.PublicKey),
		jwkOf("ps1", "PS256", &rk2.PublicKey),
		jwkOf("ec1", "ES256", &ek.PublicKey),
		jwkOf("ed1", "", dk.Public()),
	)
	attacker := newKeyServer(t, jwkOf("attacker", "", &rk2.PublicKey))
	v := newValidator(t, Config{
		Issuer: testIssuer, Audiences: []string{testAudience, "api://other"},
		JWKSURLs: []string{keys.URL}, Now: clk.Now,
	})

	pubDER, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	good := sign(t, jwt.SigningMethodRS256, rk, map[string]any{"kid": "rsa1"}, claims(now))
	h, p, s := splitParts(good)
	rs := func(kid any, c jwt.MapClaims) string {
		return sign(t, jwt.SigningMethodRS256, rk, map[string]any{"kid": kid}, c)
	}
	attackerHeaders := map[string]any{
		"kid": "attacker", "jku": attacker.URL, "x5u": attacker.URL,
		"jwk": jwkOf("attacker", "RS256", &rk2.PublicKey), "x5c": []string{"MIIB"},
	}
	noneClaims := claims(now)

	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"rs256", good, nil},
		{"ps256 with an RSA key without alg", sign(t, jwt.SigningMethodPS256, rk, map[string]any{"kid": "rsa1"}, claims(now)), nil},
		{"ps256 with a PS256 key", sign(t, jwt.SigningMethodPS256, rk2, map[string]any{"kid": "ps1"}, claims(now)), nil},
		{"es256", sign(t, jwt.SigningMethodES256, ek, map[string]any{"kid": "ec1"}, claims(now)), nil},
		{"eddsa", sign(t, jwt.SigningMethodEdDSA, dk, map[string]any{"kid": "ed1"}, claims(now)), nil},
		{"no kid tries every key", sign(t, jwt.SigningMethodES256, ek, nil, claims(now)), nil},
		{"no kid, the second of two fitting keys", sign(t, jwt.SigningMethodPS256, rk2, nil, claims(now)), nil},
		{"aud array with one match", rs("rsa1", claims(now, "aud", []string{"x", "api://other"})), nil},
		{"expired within leeway", rs("rsa1", claims(now, "exp", now.Add(-10*time.Second).Unix())), nil},
		{"nbf within leeway", rs("rsa1", claims(now, "nbf", now.Add(10*time.Second).Unix())), nil},

		{"alg none", rawToken(map[string]any{"alg": "none"}, noneClaims, ""), ErrInvalid},
		{"alg none with a signature", rawToken(map[string]any{"alg": "none"}, noneClaims, "AAAA"), ErrInvalid},
		{"alg None", rawToken(map[string]any{"alg": "None", "kid": "rsa1"}, noneClaims, "AAAA"), ErrInvalid},
		{"alg NONE", rawToken(map[string]any{"alg": "NONE", "kid": "rsa1"}, noneClaims, "AAAA"), ErrInvalid},
		{"alg nOnE", rawToken(map[string]any{"alg": "nOnE", "kid": "rsa1"}, noneClaims, "AAAA"), ErrInvalid},
		{"alg missing", rawToken(map[string]any{"kid": "rsa1"}, noneClaims, s), ErrInvalid},
		{"hs256 keyed with the RSA public key", sign(t, jwt.SigningMethodHS256, pubPEM, map[string]any{"kid": "rsa1"}, claims(now)), ErrInvalid},
		{"hs256 keyed with the RSA public key DER", sign(t, jwt.SigningMethodHS256, pubDER, map[string]any{"kid": "rsa1"}, claims(now)), ErrInvalid},
		{"expired", rs("rsa1", claims(now, "exp", now.Add(-time.Hour).Unix())), ErrExpired},
		{"nbf in the future", rs("rsa1", claims(now, "nbf", now.Add(5*time.Minute).Unix())), ErrInvalid},
		{"iat in the future", rs("rsa1", claims(now, "iat", now.Add(5*time.Minute).Unix())), ErrInvalid},
		{"expired and wrong audience is invalid", rs("rsa1", claims(now, "exp", now.Add(-time.Hour).Unix(), "aud", "x")), ErrInvalid},
		{"missing exp", rs("rsa1", claims(now, "exp", nil)), ErrInvalid},
		{"exp zero", rs("rsa1", claims(now, "exp", 0)), ErrExpired},
		{"exp out of range", rs("rsa1", claims(now, "exp", 1e15)), ErrInvalid},
		{"exp not a number", rs("rsa1", claims(now, "exp", "tomorrow")), ErrInvalid},
		{"wrong iss", rs("rsa1", claims(now, "iss", "https://evil.test")), ErrInvalid},
		{"iss with a trailing slash", rs("rsa1", claims(now, "iss", testIssuer+"/")), ErrInvalid},
		{"missing iss", rs("rsa1", claims(now, "iss", nil)), ErrInvalid},
		{"iss not a string", rs("rsa1", claims(now, "iss", []string{testIssuer})), ErrInvalid},
		{"wrong aud", rs("rsa1", claims(now, "aud", "api://evil")), ErrInvalid},
		{"missing aud", rs("rsa1", claims(now, "aud", nil)), ErrInvalid},
		{"aud array without a match", rs("rsa1", claims(now, "aud", []string{"x", "y"})), ErrInvalid},
		{"empty aud", rs("rsa1", claims(now, "aud", "")), ErrInvalid},
		{"crit header", sign(t, jwt.SigningMethodRS256, rk, map[string]any{"kid": "rsa1", "crit": []string{"exp"}}, claims(now)), ErrInvalid},
		{"kid very long", rs(strings.Repeat("k", 4000), claims(now)), ErrInvalid},
		{"kid path traversal", rs("../../etc/passwd", claims(now)), ErrInvalid},
		{"kid sql", rs("' OR '1'='1'; DROP TABLE keys; --", claims(now)), ErrInvalid},
		{"kid unicode", rs("ключ🔑\u202e\x00", claims(now)), ErrInvalid},
		{"kid empty", rs("", claims(now)), ErrInvalid},
		{"kid a number", rs(42, claims(now)), ErrInvalid},
		{"jku x5u jwk x5c point at an attacker", sign(t, jwt.SigningMethodRS256, rk2, attackerHeaders, claims(now)), ErrInvalid},
		{"embedded jwk with a known kid", sign(t, jwt.SigningMethodRS256, rk2, map[string]any{"kid": "rsa1", "jwk": jwkOf("", "RS256", &rk2.PublicKey)}, claims(now)), ErrInvalid},
		// good is cached by now, and the cache ignores signatures (see TestCacheHit): the
		// cases below sign content of their own.
		{"signed by another key under a known kid", sign(t, jwt.SigningMethodRS256, rk2, map[string]any{"kid": "rsa1"}, claims(now, "jti", "other-key")), ErrInvalid},
		{"es256 under the kid of an RSA key", sign(t, jwt.SigningMethodES256, ek, map[string]any{"kid": "rsa1"}, claims(now)), ErrInvalid},
		{"eddsa under the kid of an EC key", sign(t, jwt.SigningMethodEdDSA, dk, map[string]any{"kid": "ec1"}, claims(now)), ErrInvalid},
		{"rs256 against a PS256 JWK", sign(t, jwt.SigningMethodRS256, rk2, map[string]any{"kid": "ps1"}, claims(now)), ErrInvalid},
		{"es384 not allowed", withHeader(sign(t, jwt.SigningMethodES256, ek, map[string]any{"kid": "ec1"}, claims(now)), map[string]any{"alg": "ES384", "kid": "ec1"}), ErrInvalid},
		{"tampered payload", h + "." + enc([]byte(`{"iss":"`+testIssuer+`","aud":"`+testAudience+`","sub":"admin","exp":9999999999}`)) + "." + s, ErrInvalid},
		{"tampered signature", tamper(rs("rsa1", claims(now, "jti", "tampered"))), ErrInvalid},
		{"padding", h + "." + p + "." + s + "==", ErrInvalid},
		{"padded header", h + "=." + p + "." + s, ErrInvalid},
		{"standard alphabet", h + "." + p + "." + strings.NewReplacer("-", "+", "_", "/").Replace(s) + "+/", ErrInvalid},
		{"space", h + "." + p + " ." + s, ErrInvalid},
		{"newline", h + "." + p + "\n." + s, ErrInvalid},
		{"tab", "\t" + good, ErrInvalid},
		{"non-zero trailing bits", h + "." + nonCanonical(t, p) + "." + s, ErrInvalid},
		{"header not JSON", enc([]byte("not json")) + "." + p + "." + s, ErrInvalid},
		{"header an array", enc([]byte(`["alg"]`)) + "." + p + "." + s, ErrInvalid},
		{"payload not an object", h + "." + enc([]byte(`"x"`)) + "." + s, ErrInvalid},
		{"payload with trailing data", h + "." + enc([]byte(`{"iss":"x"} {}`)) + "." + s, ErrInvalid},
		{"two segments", h + "." + p, ErrInvalid},
		{"four segments", good + "." + s, ErrInvalid},
		{"empty", "", ErrInvalid},
		{"dots only", "..", ErrInvalid},
		{"empty payload", h + ".." + s, ErrInvalid},
		{"oversized", h + "." + enc(make([]byte, MaxTokenSize)) + "." + s, ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := validate(v, tc.token)
			wantErr(t, err, tc.want)
			if tc.want == nil && (id == nil || id.Subject != "user-1" || id.Introspected) {
				t.Fatalf("identity = %+v", id)
			}
			if err != nil {
				msg := err.Error()
				for _, part := range strings.Split(tc.token, ".") {
					if len(part) > 8 && strings.Contains(msg, part) {
						t.Fatalf("error %q holds part of the token", msg)
					}
				}
				for _, kid := range []string{"passwd", "DROP", "ключ", "kkkkkkkk"} {
					if strings.Contains(msg, kid) {
						t.Fatalf("error %q holds the kid", msg)
					}
				}
			}
		})
	}
	if n := attacker.hits.Load(); n != 0 {
		t.Fatalf("the attacker's key server was called %d times", n)
	}
}

// withHeader replaces the header of tok.
func withHeader(tok string, hdr map[string]any) string {
	b, _ := json.Marshal(hdr)
	_, p, s := splitParts(tok)
	return enc(b) + "." + p + "." + s
}

func splitParts(tok string) (h, p, s string) {
	parts := strings.Split(tok, ".")
	return parts[0], parts[1], parts[2]
}

// tamper changes the signature of tok.
func tamper(tok string) string {
	h, p, s := splitParts(tok)
	return h + "." + p + "." + flip(s)
}

// flip changes the first character of a base64url segment.
func flip(seg string) string {
	c := byte('A')
	if seg[0] == 'A' {
		c = 'B'
	}
	return string(c) + seg[1:]
}

// nonCanonical re-encodes seg with non-zero padding bits: lenient decoders read the same bytes.
func nonCanonical(t *testing.T, seg string) string {
	t.Helper()
	if len(seg)%4 == 0 {
		seg = enc(append(mustDecode(t, seg), ' ')) // a JSON space: the segment gains spare bits
	}
	want := mustDecode(t, seg)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := range len(alphabet) {
		alt := seg[:len(seg)-1] + alphabet[i:i+1]
		if b, err := base64.RawURLEncoding.DecodeString(alt); err == nil && alt != seg && string(b) == string(want) {
			return alt
		}
	}
	t.Fatal("no non-canonical encoding found")
	return ""
}

func mustDecode(t *testing.T, seg string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestIdentity checks the identity of a locally verified token.
func TestIdentity(t *testing.T) {
	clk := newClock()
	now := clk.Now()
	keys := newKeyServer(t, jwkOf("rsa1", "RS256", &rsaKey().PublicKey))
	v := newValidator(t, Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}, Now: clk.Now})
	exp := now.Add(5 * time.Minute).Truncate(time.Second)
	for _, tc := range []struct {
		name string
		c    jwt.MapClaims
		sub  string
	}{
		{"sub", claims(now, "exp", exp.Unix(), "id", "v1-id"), "user-1"},
		{"v1 id", claims(now, "exp", exp.Unix(), "sub", nil, "id", "v1-id", "uid", "u"), "v1-id"},
		{"uid", claims(now, "exp", exp.Unix(), "sub", nil, "uid", "okta-uid"), "okta-uid"},
		{"none", claims(now, "exp", exp.Unix(), "sub", nil), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c["account"] = 12345678901234567
			id, err := validate(v, sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "rsa1"}, tc.c))
			wantErr(t, err, nil)
			if id.Subject != tc.sub || !id.Expiry.Equal(exp) || id.Introspected {
				t.Fatalf("identity = %+v", id)
			}
			if n, ok := id.Claims["account"].(json.Number); !ok || n.String() != "12345678901234567" {
				t.Fatalf("account claim = %#v, want the exact json.Number", id.Claims["account"])
			}
			if id.Claims["iss"] != testIssuer {
				t.Fatalf("claims = %v", id.Claims)
			}
		})
	}
}

// TestNew checks configuration errors and defaults, and that New does no network I/O.
func TestNew(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	local := func(f func(*Config)) Config {
		c := Config{Issuer: testIssuer, JWKSURLs: []string{"https://keys.test/jwks"}, Audiences: []string{testAudience}}
		f(&c)
		return c
	}
	intro := &Introspection{URL: "https://id.test/ums/v2/users/self"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"nothing configured", Config{}, "no key source and no introspection"},
		{"alg none", local(func(c *Config) { c.Algorithms = []string{"RS256", "none"} }), `"none" is refused`},
		{"alg HS256", local(func(c *Config) { c.Algorithms = []string{"HS256"} }), "shared-secret"},
		{"alg unknown", local(func(c *Config) { c.Algorithms = []string{"RS1"} }), "unknown algorithm"},
		{"leeway too long", local(func(c *Config) { c.Leeway = 61 * time.Second }), "more than 1m0s"},
		{"leeway negative", local(func(c *Config) { c.Leeway = -time.Second }), "negative"},
		{"no audience", local(func(c *Config) { c.Audiences = nil }), "audience is required"},
		{"empty audience", local(func(c *Config) { c.Audiences = []string{""} }), "audience is required"},
		{"no issuer", local(func(c *Config) { c.Issuer = "" }), "issuer is required"},
		{"issuer without keys", Config{Issuer: testIssuer, Introspection: intro}, "no jwks url"},
		{"bad jwks url", local(func(c *Config) { c.JWKSURLs = []string{"keys.test/jwks"} }), "jwks url"},
		{"bad discovery url", local(func(c *Config) { c.DiscoveryURL = "ftp://x" }), "discovery url"},
		{"small RSA key", local(func(c *Config) { c.PublicKeys = append(c.PublicKeys, &small.PublicKey) }), "public key 1: RSA key is 1024 bits"},
		{"nil key", local(func(c *Config) { c.PublicKeys = append(c.PublicKeys, nil) }), "key is nil"},
		{"negative cache size", local(func(c *Config) { c.CacheSize = -1 }), "negative"},
		{"introspection url", Config{Introspection: &Introspection{URL: "/self"}}, "introspection: url"},
		{"introspection authorization header", Config{Introspection: &Introspection{URL: intro.URL, Header: http.Header{"authorization": {"x"}}}}, "Authorization"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error with %q", err, tc.want)
			}
			if v != nil {
				t.Fatal("New returned a validator with an error")
			}
		})
	}

	t.Run("defaults and no I/O", func(t *testing.T) {
		keys := newKeyServer(t, jwkOf("rsa1", "", &rsaKey().PublicKey))
		v, err := New(Config{JWKSURLs: []string{keys.URL}, DiscoveryURL: keys.URL, Audiences: []string{testAudience}})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		c := v.cfg
		if c.Issuer != keys.URL || c.Leeway != DefaultLeeway || c.RefreshInterval != DefaultRefreshInterval ||
			c.UnknownKIDInterval != DefaultUnknownKIDInterval || c.CacheSize != DefaultCacheSize ||
			strings.Join(c.Algorithms, ",") != "RS256,ES256,PS256,EdDSA" || v.client == http.DefaultClient || v.client.Timeout != DefaultHTTPTimeout {
			t.Fatalf("defaults not applied: %+v", c)
		}
		time.Sleep(20 * time.Millisecond) // any stray goroutine of New would have called by now
		if keys.hits.Load() != 0 || v.Ready() {
			t.Fatalf("New fetched keys (%d hits) or is ready", keys.hits.Load())
		}
		v.Close()
		v.Close() // idempotent
		v.Start() // after Close: nothing
		time.Sleep(20 * time.Millisecond)
		if keys.hits.Load() != 0 {
			t.Fatal("Start after Close fetched keys")
		}
	})
}
