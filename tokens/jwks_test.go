package tokens

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// emulatorConfig verifies the emulator's OAuth2 default server through its JWKS.
func emulatorConfig(e *emu, f func(*Config)) Config {
	c := Config{Issuer: e.issuer(), JWKSURLs: []string{e.jwksURL()}, Audiences: []string{testAudience}}
	if f != nil {
		f(&c)
	}
	return c
}

func TestEmulatorJWKS(t *testing.T) {
	e := newEmu(t)
	v := newValidator(t, emulatorConfig(e, nil))
	id, err := validate(v, e.clientToken())
	wantErr(t, err, nil)
	if id.Subject != "sysapp" || id.Claims["cid"] != "sysapp" || id.Introspected || time.Until(id.Expiry) < 5*time.Minute {
		t.Fatalf("identity = %+v", id)
	}
	if n := e.calls("oauth2.keys"); n != 1 {
		t.Fatalf("oauth2.keys called %d times, want 1", n)
	}
}

func TestDiscovery(t *testing.T) {
	e := newEmu(t)
	rec := newRecorder()
	v := newValidator(t, Config{DiscoveryURL: e.issuer(), Audiences: []string{testAudience}, Observer: rec})
	if v.cfg.Issuer != e.issuer() {
		t.Fatalf("issuer = %q, want the discovery URL", v.cfg.Issuer)
	}
	_, err := validate(v, e.clientToken())
	wantErr(t, err, nil)
	if d, k := e.calls("oauth2.discovery"), e.calls("oauth2.keys"); d != 1 || k != 1 {
		t.Fatalf("discovery %d, keys %d calls; want 1 and 1", d, k)
	}
	if n := rec.count("jwks.ok"); n != 2 {
		t.Fatalf("JWKSFetch ok = %d, want 2 (discovery and key set)", n)
	}
}

// TestDiscoveryRetried: a discovery document that fails, then names another issuer, keeps the
// validator not ready and logs at Warn; once it answers properly the keys load.
func TestDiscoveryRetried(t *testing.T) {
	keys := newKeyServer(t, jwkOf("rsa1", "", &rsaKey().PublicKey))
	var mu sync.Mutex
	calls := 0
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		switch n {
		case 1:
			w.WriteHeader(http.StatusBadGateway)
		case 2:
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": "https://evil.test", "jwks_uri": keys.URL})
		default:
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": srv.URL, "jwks_uri": keys.URL})
		}
	}))
	defer srv.Close()
	core, logs := observer.New(zap.DebugLevel)
	v, err := New(Config{DiscoveryURL: srv.URL, Audiences: []string{testAudience}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Start()
	waitFor(t, "keys loaded", v.Ready)
	warns := logs.FilterMessage("jwks refresh failed").All()
	if len(warns) != 2 || warns[0].Level != zap.WarnLevel {
		t.Fatalf("warnings: %v", warns)
	}
	if f := warns[1].ContextMap(); f["url"] != srv.URL+"/.well-known/openid-configuration" || !strings.Contains(fmt.Sprint(f["error"]), `names issuer "https://evil.test"`) {
		t.Fatalf("warning fields: %v", f)
	}
	_, err = validate(v, sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "rsa1"}, claims(time.Now(), "iss", srv.URL)))
	wantErr(t, err, nil)
}

// TestStaticKeys: PEM keys verify tokens without a kid or with an unknown kid, with no remote
// source and no Start.
func TestStaticKeys(t *testing.T) {
	var keys []crypto.PublicKey
	for _, pub := range []crypto.PublicKey{&rsaKey().PublicKey, &ecKey().PublicKey, edKey().Public()} {
		k, err := ParsePublicKeyPEM(pemOf(t, "PUBLIC KEY", pkixDER(t, pub)))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	rec := newRecorder()
	v, err := New(Config{Issuer: testIssuer, Audiences: []string{testAudience}, PublicKeys: keys, Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.Ready() {
		t.Fatal("a validator without remote keys is not ready")
	}
	now := time.Now()
	for _, tc := range []struct {
		name   string
		method jwt.SigningMethod
		key    any
		hdr    map[string]any
		want   error
	}{
		{"rsa no kid", jwt.SigningMethodRS256, rsaKey(), nil, nil},
		{"ps256 unknown kid", jwt.SigningMethodPS256, rsaKey(), map[string]any{"kid": "rotated"}, nil},
		{"es256", jwt.SigningMethodES256, ecKey(), nil, nil},
		{"eddsa unknown kid", jwt.SigningMethodEdDSA, edKey(), map[string]any{"kid": "x"}, nil},
		{"other rsa key", jwt.SigningMethodRS256, rsaKeys()[1], nil, ErrInvalid},
		{"other rsa key unknown kid", jwt.SigningMethodRS256, rsaKeys()[1], map[string]any{"kid": "x"}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := validate(v, sign(t, tc.method, tc.key, tc.hdr, claims(now, "jti", tc.name)))
			wantErr(t, err, tc.want)
		})
	}
	if n := rec.count("jwks.ok") + rec.count("jwks.error"); n != 0 {
		t.Fatalf("%d key fetches without a remote source", n)
	}
}

// TestCombinedSources: a static EC key, the emulator's JWKS and a second key server all verify.
func TestCombinedSources(t *testing.T) {
	e := newEmu(t)
	other := newKeyServer(t, jwkOf("ed1", "EdDSA", edKey().Public()))
	v := newValidator(t, emulatorConfig(e, func(c *Config) {
		c.JWKSURLs = append(c.JWKSURLs, other.URL)
		c.PublicKeys = []crypto.PublicKey{&ecKey().PublicKey}
	}))
	now := time.Now()
	for name, tok := range map[string]string{
		"emulator": e.clientToken(),
		"ed25519":  sign(t, jwt.SigningMethodEdDSA, edKey(), map[string]any{"kid": "ed1"}, claims(now, "iss", e.issuer())),
		"static":   sign(t, jwt.SigningMethodES256, ecKey(), nil, claims(now, "iss", e.issuer())),
	} {
		_, err := validate(v, tok)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestNotReady: until the key set answers, a token that needs it is ErrNotReady; a token for
// introspection does not wait.
func TestNotReady(t *testing.T) {
	e := newEmu(t)
	release := make(chan struct{})
	var once sync.Once
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { <-release }) // holds the first answer
		resp, err := http.Get(e.jwksURL())
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		var set json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&set)
		_, _ = w.Write(set)
	}))
	defer gate.Close()
	defer close(release)
	rec := newRecorder()
	v, err := New(emulatorConfig(e, func(c *Config) {
		c.JWKSURLs = []string{gate.URL}
		c.Observer = rec
		c.Introspection = &Introspection{URL: e.URL + "/ums/v2/users/self"}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Start()
	tok := e.clientToken()
	for _, tc := range []string{tok, sign(t, jwt.SigningMethodRS256, rsaKey(), nil, claims(time.Now(), "iss", e.issuer()))} {
		_, err = validate(v, tc)
		wantErr(t, err, ErrNotReady)
	}
	if v.Ready() || rec.count("validation.not_ready") != 2 {
		t.Fatalf("ready %v, not_ready %d", v.Ready(), rec.count("validation.not_ready"))
	}
	id, err := validate(v, e.v1Token())
	wantErr(t, err, nil)
	if !id.Introspected {
		t.Fatal("a v1 token was not introspected")
	}
	release <- struct{}{}
	waitFor(t, "keys loaded", v.Ready)
	_, err = validate(v, tok)
	wantErr(t, err, nil)
}

// TestNotReadyFirstAnswerFails: a key set that fails its first answer is retried with backoff.
func TestNotReadyFirstAnswerFails(t *testing.T) {
	keys := newKeyServer(t, jwkOf("rsa1", "", &rsaKey().PublicKey))
	keys.failFirst = 1
	v, err := New(Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Start()
	tok := sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "rsa1"}, claims(time.Now()))
	waitFor(t, "first answer", func() bool { return keys.hits.Load() >= 1 })
	if !v.Ready() {
		_, err = validate(v, tok)
		wantErr(t, err, ErrNotReady)
	}
	waitFor(t, "keys loaded", v.Ready)
	_, err = validate(v, tok)
	wantErr(t, err, nil)
}

// TestStaleKeys: when the key set is down or answers junk, the last good keys stay in use.
func TestStaleKeys(t *testing.T) {
	e := newEmu(t)
	rec := newRecorder()
	core, logs := observer.New(zap.WarnLevel)
	v := newValidator(t, emulatorConfig(e, func(c *Config) {
		c.RefreshInterval = 20 * time.Millisecond
		c.Observer = rec
		c.Logger = zap.New(core)
	}))
	tok := e.clientToken()
	e.fault(`{"endpoint":"oauth2.keys","status":503}`)
	waitFor(t, "failed refreshes", func() bool { return rec.count("jwks.error") >= 2 })
	v.verified = newCache[verifiedEntry](10) // no help from the cache
	_, err := validate(v, tok)
	wantErr(t, err, nil)
	if !v.Ready() {
		t.Fatal("not ready after a failed refresh")
	}
	w := logs.FilterMessage("jwks refresh failed").All()
	if len(w) == 0 || w[0].ContextMap()["url"] != e.jwksURL() || !strings.Contains(fmt.Sprint(w[0].ContextMap()["error"]), "status 503") {
		t.Fatalf("warnings: %v", w)
	}
	e.clearFaults()

	// A key server that turns to junk.
	keys := newKeyServer(t, jwkOf("rsa1", "", &rsaKey().PublicKey))
	rec = newRecorder()
	v = newValidator(t, Config{
		Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL},
		RefreshInterval: 20 * time.Millisecond, Observer: rec,
	})
	tok = sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "rsa1"}, claims(time.Now()))
	for _, junk := range []struct {
		status int
		body   []byte
	}{
		{200, []byte("<html>maintenance</html>")},
		{200, []byte(`{"keys":[]}`)},
		{200, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"rsa1"}]}`)},
		{200, []byte(`{"keys":[` + strings.Repeat(" ", 1<<20) + `]}`)},
		{404, []byte(`{"keys":[]}`)},
	} {
		keys.set(junk.status, junk.body)
		n := rec.count("jwks.error")
		waitFor(t, "a failed refresh", func() bool { return rec.count("jwks.error") > n })
		v.verified = newCache[verifiedEntry](10)
		_, err := validate(v, tok)
		wantErr(t, err, nil)
	}
}

// TestSizeCap: a key set over 1 MiB is refused.
func TestSizeCap(t *testing.T) {
	ed := jwkOf("ed1", "", edKey().Public())
	ed["pad"] = strings.Repeat("x", 1<<20)
	keys := newKeyServer(t, ed)
	rec := newRecorder()
	core, logs := observer.New(zap.WarnLevel)
	v, err := New(Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}, Observer: rec, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Start()
	waitFor(t, "a failed fetch", func() bool { return rec.count("jwks.error") > 0 })
	if v.Ready() || !strings.Contains(fmt.Sprint(logs.All()[0].ContextMap()["error"]), "exceeds 1 MiB") {
		t.Fatalf("ready %v, logs %v", v.Ready(), logs.All())
	}
}

// TestPeriodicRefresh: a rotated key is picked up by the periodic refresh, without any
// unknown-kid refetch.
func TestPeriodicRefresh(t *testing.T) {
	e := newEmu(t)
	rec := newRecorder()
	v := newValidator(t, emulatorConfig(e, func(c *Config) {
		c.RefreshInterval = 50 * time.Millisecond
		c.UnknownKIDInterval = time.Hour
		c.Observer = rec
	}))
	e.rotate()
	n := rec.count("jwks.ok")
	waitFor(t, "a refresh after the rotation", func() bool { return rec.count("jwks.ok") >= n+2 })
	_, err := validate(v, e.clientToken())
	wantErr(t, err, nil)
	if u := rec.count("unknown_kid.true") + rec.count("unknown_kid.false"); u != 0 {
		t.Fatalf("%d unknown kids", u)
	}
}

// TestUnknownKIDRefetch: after a rotation, the first token with the new kid triggers one
// refetch; the next rotation within UnknownKIDInterval is rate-limited and fails at once.
func TestUnknownKIDRefetch(t *testing.T) {
	e := newEmu(t)
	clk := newClock()
	rec := newRecorder()
	v := newValidator(t, emulatorConfig(e, func(c *Config) { c.Now, c.Observer = clk.Now, rec }))
	_, err := validate(v, e.clientToken())
	wantErr(t, err, nil)

	e.rotate()
	_, err = validate(v, e.clientToken())
	wantErr(t, err, nil)
	if k, u := e.calls("oauth2.keys"), rec.count("unknown_kid.true"); k != 2 || u != 1 {
		t.Fatalf("keys calls %d, refetches %d; want 2 and 1", k, u)
	}

	e.rotate()
	tok := e.clientToken()
	_, err = validate(v, tok)
	wantErr(t, err, ErrInvalid)
	if k, u := e.calls("oauth2.keys"), rec.count("unknown_kid.false"); k != 2 || u != 1 {
		t.Fatalf("keys calls %d, rate-limited %d; want 2 and 1", k, u)
	}

	clk.Advance(DefaultUnknownKIDInterval)
	_, err = validate(v, tok)
	wantErr(t, err, nil)
	if k := e.calls("oauth2.keys"); k != 3 {
		t.Fatalf("keys calls %d, want 3", k)
	}
}

// TestUnknownKIDSpray: 200 concurrent tokens with random kids cause at most one fetch and all
// fail promptly.
func TestUnknownKIDSpray(t *testing.T) {
	e := newEmu(t)
	rec := newRecorder()
	v := newValidator(t, emulatorConfig(e, func(c *Config) { c.Observer = rec }))
	_, p, s := splitParts(e.clientToken())
	before := e.calls("oauth2.keys")
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			hdr, _ := json.Marshal(map[string]any{"alg": "RS256", "kid": fmt.Sprintf("spray-%d-%d", i, time.Now().UnixNano())})
			_, err := validate(v, enc(hdr)+"."+p+"."+s)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		wantErr(t, err, ErrInvalid)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the spray took %s", d)
	}
	if n := e.calls("oauth2.keys") - before; n > 1 {
		t.Fatalf("%d key fetches for the spray, want at most 1", n)
	}
	if n := rec.count("unknown_kid.true"); n > 1 {
		t.Fatalf("%d refetches started", n)
	}
	if n := rec.count("unknown_kid.true") + rec.count("unknown_kid.false"); n != 200 {
		t.Fatalf("%d unknown kids observed, want 200", n)
	}
}

// TestUnknownKIDWaitBounded: a refetch of a key set that hangs is bounded by the client timeout,
// and requests arriving meanwhile join it instead of starting another.
func TestUnknownKIDWaitBounded(t *testing.T) {
	e := newEmu(t)
	v := newValidator(t, emulatorConfig(e, func(c *Config) {
		c.HTTPClient = &http.Client{Timeout: 200 * time.Millisecond}
	}))
	e.fault(`{"endpoint":"oauth2.keys","latency":"2s"}`)
	e.rotate()
	tok := e.clientToken()
	start := time.Now()
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			_, err := validate(v, tok)
			wantErr(t, err, ErrInvalid)
		})
	}
	wg.Wait()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("waited %s for a refetch bounded by a 200ms timeout", d)
	}
	if n := e.calls("oauth2.keys"); n != 2 {
		t.Fatalf("keys calls %d, want 2 (load and one refetch)", n)
	}
	// A request whose context ends stops waiting at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.Validate(ctx, tok); err == nil {
		t.Fatal("a cancelled request validated")
	}
}

// TestClose: Close stops the refresh loop and is idempotent.
func TestClose(t *testing.T) {
	keys := newKeyServer(t, jwkOf("rsa1", "", &rsaKey().PublicKey))
	v := newValidator(t, Config{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURLs: []string{keys.URL}, RefreshInterval: 5 * time.Millisecond})
	waitFor(t, "refreshes", func() bool { return keys.hits.Load() >= 3 })
	v.Close()
	n := keys.hits.Load()
	time.Sleep(30 * time.Millisecond) // six refresh periods
	if m := keys.hits.Load(); m != n {
		t.Fatalf("%d fetches after Close", m-n)
	}
	v.Close()
	v.Start()
	if _, err := validate(v, sign(t, jwt.SigningMethodRS256, rsaKey(), map[string]any{"kid": "x"}, claims(time.Now()))); err == nil {
		t.Fatal("validated an unknown kid after Close")
	}
}
