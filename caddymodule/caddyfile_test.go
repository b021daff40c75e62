package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/sitegate/sitegate/upstream/emulator"
)

func TestEmulatorCaddyfile(t *testing.T) {
	h := httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(`identity_emulator {
		api_key {env.FABRIC_API_KEY}
		user demo demo-password account 5f689caa4216e7000750d1ef
		user ops {env.OPS_PASSWORD} {
			account 614bacaa4a74a70009d69d33
			id 0123456789abcdef01234567
			name Olive Ops
			email ops@acme.example
			roles admin customer
			deactivated
		}
		client sysapp {env.SYSAPP_SECRET}
		client spa {
			redirect_uri http://127.0.0.1:8080/.sitegate/callback http://localhost:8080/cb
		}
		access_lifetime 2m
		refresh_lifetime 1d
		client_token_lifetime 90s
		keep_refresh_tokens
		audience api://sitegate
		issuer http://127.0.0.1:8090
		schema_shapes
	}`)}
	mh, err := parseEmulator(h)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	got := string(caddyconfig.JSON(mh, nil))
	// Durations adapt to nanoseconds; placeholders stay unresolved until Provision.
	want := `{"api_key":"{env.FABRIC_API_KEY}",` +
		`"users":[{"username":"demo","password":"demo-password","account":"5f689caa4216e7000750d1ef"},` +
		`{"username":"ops","password":"{env.OPS_PASSWORD}","account":"614bacaa4a74a70009d69d33","id":"0123456789abcdef01234567","first_name":"Olive","last_name":"Ops","email":"ops@acme.example","roles":["admin","customer"],"deactivated":true}],` +
		`"clients":[{"id":"sysapp","secret":"{env.SYSAPP_SECRET}"},{"id":"spa","redirect_uris":["http://127.0.0.1:8080/.sitegate/callback","http://localhost:8080/cb"]}],` +
		`"access_lifetime":120000000000,"refresh_lifetime":86400000000000,"client_token_lifetime":90000000000,` +
		`"keep_refresh_tokens":true,"audience":"api://sitegate","issuer":"http://127.0.0.1:8090","schema_shapes":true}`
	if got != want {
		t.Errorf("adapted JSON\n got: %s\nwant: %s", got, want)
	}
}

// TestEmulatorCaddyfileErrors checks that bad config is refused with the file and line.
func TestEmulatorCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
		line             int
	}{
		{"unknown option", "colour blue", `unrecognized identity_emulator option "colour"`, 3},
		{"user without password", "user demo", `user "demo" needs a password`, 3},
		{"user without name", "user", `user needs a username and a password`, 3},
		{"inline junk after password", "user demo pw acct 1", `user "demo": expected 'account <id>' after the password, got "acct"`, 3},
		{"unknown user option", "user demo pw {\n\t\tcolour blue\n\t}", `unrecognized user option "colour"`, 4},
		{"name with three parts", "user demo pw {\n\t\tname a b c\n\t}", `name takes a first name and optionally a last name`, 4},
		{"client without id", "client", `client needs an id`, 3},
		{"client with extra args", "client a b c", `wrong argument count or unexpected line ending after 'c'`, 3},
		{"unknown client option", "client a {\n\t\tscope s2s\n\t}", `unrecognized client option "scope"`, 4},
		{"bad duration", "access_lifetime soon", `access_lifetime: bad duration "soon"`, 3},
		{"zero duration", "refresh_lifetime 0s", `refresh_lifetime: duration must be positive, got "0s"`, 3},
		{"flag with argument", "keep_refresh_tokens yes", `wrong argument count or unexpected line ending after 'yes'`, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := "http://:8090 {\n\tidentity_emulator {\n\t" + tc.body + "\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
			at := fmt.Sprintf(", at Caddyfile:%d", tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), at) {
				t.Fatalf("error %v, want it to contain %q and end with %q", err, tc.want, at)
			}
		})
	}
}

// TestEmulatorProvision checks placeholder resolution and that an unset variable fails loudly
// instead of seeding an empty secret.
func TestEmulatorProvision(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()

	t.Setenv("SITEGATE_TEST_PASSWORD", "from-env")
	m := &IdentityEmulator{Users: []emulator.User{{Username: "demo", Password: "{env.SITEGATE_TEST_PASSWORD}"}}}
	if err := m.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	login := httptest.NewRequest("POST", "/api-commerceIdentity/auth/local/login", strings.NewReader(`{"username":"demo","password":"from-env"}`))
	login.Header.Set("Content-Type", "application/json")
	login.Header.Set("x-site-context", `{"account":"5f689caa4216e7000750d1ef"}`)
	rec := httptest.NewRecorder()
	m.emulator.ServeHTTP(rec, login)
	if rec.Code != http.StatusOK {
		t.Fatalf("login with the password from the environment: %d %s", rec.Code, rec.Body)
	}

	m = &IdentityEmulator{APIKey: "{env.SITEGATE_TEST_UNSET}"}
	err := m.Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), "api_key") {
		t.Fatalf("provision with an unset variable: %v, want an api_key error", err)
	}

	m = &IdentityEmulator{Users: []emulator.User{{Username: "demo", Password: "pw", Account: "short"}}}
	if err := m.Provision(ctx); err == nil || !strings.Contains(err.Error(), "24-character") {
		t.Fatalf("provision with a bad account: %v, want a 24-character error", err)
	}

	var neg IdentityEmulator
	if err := json.Unmarshal([]byte(`{"access_lifetime":-1}`), &neg); err != nil {
		t.Fatal(err)
	}
	if err := neg.Validate(); err == nil {
		t.Fatal("a negative lifetime validated")
	}
}

func TestSitegateCaddyfile(t *testing.T) {
	h := httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(`sitegate {
		issuer     http://127.0.0.1:8090/oauth2/default
		audience   api://default api://other
		algorithms RS256 ES256
		leeway     45s
		jwks       http://127.0.0.1:8090/oauth2/default/v1/keys
		discovery  http://127.0.0.1:8090/oauth2/default
		public_key /etc/keys/a.pem /etc/keys/b.pem
		jwks_refresh 5m
		introspect http://127.0.0.1:8090/ums/v2/users/self {
			header x-api-key {env.FABRIC_API_KEY}
			max_ttl 2m
			failure_ttl 5s
			max_concurrent 8
		}
		site_context {
			account 5f689caa4216e7000750d1ef
			account_claim tenant
			channel 12
			stage production
			date now
			allow_client channel date
			fabric_v3_headers
		}
		identity_header X-User-Id {http.auth.user.id}
		identity_header X-User-Account {http.auth.user.account}
		use_handle_errors
	}`)}
	mh, err := parseSitegate(h)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	got := string(caddyconfig.JSON(mh, nil))
	want := `{"issuer":"http://127.0.0.1:8090/oauth2/default","audiences":["api://default","api://other"],` +
		`"algorithms":["RS256","ES256"],"leeway":45000000000,"jwks_urls":["http://127.0.0.1:8090/oauth2/default/v1/keys"],` +
		`"discovery":"http://127.0.0.1:8090/oauth2/default","public_key_files":["/etc/keys/a.pem","/etc/keys/b.pem"],` +
		`"jwks_refresh":300000000000,` +
		`"introspection":{"url":"http://127.0.0.1:8090/ums/v2/users/self","headers":{"x-api-key":"{env.FABRIC_API_KEY}"},"max_ttl":120000000000,"failure_ttl":5000000000,"max_concurrent":8},` +
		`"site_context":{"account":"5f689caa4216e7000750d1ef","account_claim":"tenant","channel":12,"stage":"production","date":true,"allow_client":["channel","date"],"fabric_v3_headers":true},` +
		`"identity_headers":{"X-User-Account":"{http.auth.user.account}","X-User-Id":"{http.auth.user.id}"},"use_handle_errors":true}`
	if got != want {
		t.Errorf("adapted JSON\n got: %s\nwant: %s", got, want)
	}

	mh, err = parseSitegate(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(`sitegate {
		site_context {
			account 5f689caa4216e7000750d1ef
		}
		identity fabric_v1 https://prod01-apigw.acme.fabric.zone {
			api_key {env.FABRIC_API_KEY}
			timeout 5s
			max_concurrent 16
		}
		session {
			store redis {
				sentinel mymaster 10.0.0.1:26379 10.0.0.2:26379
				username sitegate
				password {env.REDIS_PASSWORD}
				db 2
				tls
				key_prefix acme:
				timeout 1s
				disable_identity
			}
			key {env.SITEGATE_KEY} {env.SITEGATE_OLD_KEY}
			idle_timeout 15m
			lifetime 8h
			refresh_before 90s
			cookie __Host-acme
			endpoints /auth
			allow_origin https://app.acme.example
		}
	}`)})
	want = `{"site_context":{"account":"5f689caa4216e7000750d1ef"},` +
		`"identity":{"dialect":"fabric_v1","url":"https://prod01-apigw.acme.fabric.zone","api_key":"{env.FABRIC_API_KEY}","timeout":5000000000,"max_concurrent":16},` +
		`"session":{"redis":{"master_name":"mymaster","sentinels":["10.0.0.1:26379","10.0.0.2:26379"],"username":"sitegate","password":"{env.REDIS_PASSWORD}","db":2,"tls":true,"key_prefix":"acme:","timeout":1000000000,"disable_identity":true},` +
		`"keys":["{env.SITEGATE_KEY}","{env.SITEGATE_OLD_KEY}"],"idle_timeout":900000000000,"lifetime":28800000000000,"refresh_before":90000000000,` +
		`"cookie":"__Host-acme","endpoints":"/auth","allow_origins":["https://app.acme.example"]}}`
	if err != nil || string(caddyconfig.JSON(mh, nil)) != want {
		t.Errorf("sessions: %v\n got: %s\nwant: %s", err, caddyconfig.JSON(mh, nil), want)
	}
	for body, want := range map[string]string{
		"store redis redis://127.0.0.1:6379/0":     `{"redis":{"url":"redis://127.0.0.1:6379/0"}}`,
		"store redis {\n cluster a:7000 b:7000\n}": `{"redis":{"cluster":["a:7000","b:7000"]}}`,
		"store memory": `{}`,
	} {
		mh, err := parseSitegate(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser("sitegate {\n identity ece http://ece\n session {\n " + body + "\n }\n}")})
		if got := string(caddyconfig.JSON(mh, nil)); err != nil || !strings.Contains(got, `"session":`+want) {
			t.Errorf("%s: %v %s, want session %s", body, err, got, want)
		}
	}

	mh, err = parseSitegate(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser("sitegate {\n anonymous\n}")})
	if err != nil || string(caddyconfig.JSON(mh, nil)) != `{"anonymous":true}` {
		t.Errorf("anonymous: %v %s", err, caddyconfig.JSON(mh, nil))
	}
}

func TestSitegateCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
		line             int
	}{
		{"unknown option", "colour blue", `unrecognized sitegate option "colour"`, 3},
		{"issuer without url", "issuer", "wrong argument count", 3},
		{"audience without value", "audience", "wrong argument count", 3},
		{"bad leeway", "leeway forever", `leeway: bad duration "forever"`, 3},
		{"introspect without url", "introspect", "introspect needs the URL of an identity endpoint", 3},
		{"unknown introspect option", "introspect http://x {\n\t\tcache 1m\n\t}", `unrecognized introspect option "cache"`, 4},
		{"bad max_concurrent", "introspect http://x {\n\t\tmax_concurrent none\n\t}", `max_concurrent takes a positive integer, got "none"`, 4},
		{"unknown site_context option", "site_context {\n\t\tsite acme\n\t}", `unrecognized site_context option "site"`, 4},
		{"date other than now", "site_context {\n\t\tdate 2020-01-01\n\t}", `date takes 'now', got "2020-01-01"`, 4},
		{"bad channel", "site_context {\n\t\tchannel US\n\t}", `channel takes a positive integer, got "US"`, 4},
		{"identity header without value", "identity_header X-User-Id", "identity_header takes a header name and a value", 3},
		{"identity header twice", "identity_header X-A a\n\tidentity_header X-A b", "identity_header X-A is set twice", 4},
		{"flag with argument", "anonymous yes", "wrong argument count", 3},
		{"identity without url", "identity fabric_v1", "identity takes a dialect (fabric_v1, ece or oauth2) and the service's base URL", 3},
		{"unknown dialect", "identity saml https://idp", `identity: unknown dialect "saml"`, 3},
		{"unknown identity option", "identity ece https://ece {\n\t\tretries 3\n\t}", `unrecognized identity option "retries"`, 4},
		{"scope without value", "identity oauth2 https://idp {\n\t\tscope\n\t}", "wrong argument count", 4},
		{"login_redirect with argument", "session {\n\t\tlogin_redirect yes\n\t}", "wrong argument count", 4},
		{"session argument", "session redis", "wrong argument count", 3},
		{"unknown store", "session {\n\t\tstore etcd\n\t}", `unknown store "etcd" (want memory or redis)`, 4},
		{"store without kind", "session {\n\t\tstore\n\t}", "store takes memory or redis", 4},
		{"redis without address", "session {\n\t\tstore redis\n\t}", "redis needs exactly one of a url, sentinel or cluster", 4},
		{"redis two modes", "session {\n\t\tstore redis redis://a {\n\t\t\tcluster b:1\n\t\t}\n\t}", "redis needs exactly one of a url, sentinel or cluster", 6},
		{"sentinel without addresses", "session {\n\t\tstore redis {\n\t\t\tsentinel mymaster\n\t\t}\n\t}", "sentinel takes the master name and one or more sentinel addresses", 5},
		{"bad db", "session {\n\t\tstore redis {\n\t\t\tdb one\n\t\t}\n\t}", `db takes a database number, got "one"`, 5},
		{"unknown redis option", "session {\n\t\tstore redis {\n\t\t\tpool 10\n\t\t}\n\t}", `unrecognized redis option "pool"`, 5},
		{"unknown session option", "session {\n\t\tsecure off\n\t}", `unrecognized session option "secure"`, 4},
		{"bad idle timeout", "session {\n\t\tidle_timeout -1m\n\t}", `idle_timeout: duration must be positive, got "-1m"`, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := "http://:8080 {\n\tsitegate {\n\t" + tc.body + "\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
			at := fmt.Sprintf(", at Caddyfile:%d", tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), at) {
				t.Fatalf("error %v, want it to contain %q and end with %q", err, tc.want, at)
			}
		})
	}
}

// TestSitegateDirectiveOrder checks that sitegate runs before reverse_proxy without an order
// option, whatever the order it is written in.
func TestSitegateDirectiveOrder(t *testing.T) {
	cfg := "http://:8080 {\n\treverse_proxy 127.0.0.1:8091\n\tsitegate {\n\t\tanonymous\n\t}\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if i, j := strings.Index(s, `"handler":"sitegate"`), strings.Index(s, `"handler":"reverse_proxy"`); i < 0 || j < 0 || i > j {
		t.Fatalf("sitegate does not come before reverse_proxy:\n%s", s)
	}
}

// TestSitegateProvisionErrors checks that bad configuration fails at load with a precise error,
// and that no network I/O is needed to load a good one.
func TestSitegateProvisionErrors(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	pem := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(pem, []byte("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, json, want string
	}{
		{"no key source", `{}`, "no key source and no introspection"},
		{"issuer without audience", `{"issuer":"https://idp.test","jwks_urls":["https://idp.test/keys"]}`, "audience"},
		{"alg none", `{"issuer":"https://idp.test","audiences":["a"],"jwks_urls":["https://idp.test/keys"],"algorithms":["none"]}`, `"none" is refused`},
		{"HS256", `{"issuer":"https://idp.test","audiences":["a"],"jwks_urls":["https://idp.test/keys"],"algorithms":["HS256"]}`, "HS256"},
		{"leeway too long", `{"issuer":"https://idp.test","audiences":["a"],"jwks_urls":["https://idp.test/keys"],"leeway":"2m"}`, "leeway"},
		{"relative jwks url", `{"issuer":"https://idp.test","audiences":["a"],"jwks_urls":["/keys"]}`, "jwks url"},
		{"missing key file", `{"issuer":"https://idp.test","audiences":["a"],"public_key_files":["/nonexistent.pem"]}`, "public_key"},
		{"bad key file", `{"issuer":"https://idp.test","audiences":["a"],"public_key_files":["` + pem + `"]}`, "public_key " + pem},
		{"unset variable", `{"introspection":{"url":"https://idp.test/self","headers":{"x-api-key":"{env.SITEGATE_TEST_UNSET}"}}}`, "introspect header x-api-key"},
		{"client may not choose the account", `{"introspection":{"url":"https://idp.test/self"},"site_context":{"allow_client":["account"]}}`, "site_context: allow_client"},
		{"bad session key", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"keys":["c2hvcnQ="]}}`, "session: key 1"},
		{"unset session key", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"keys":["{env.SITEGATE_TEST_UNSET}"]}}`, "session: key 1"},
		{"unset redis password", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"keys":["` + testSessionKey + `"],"redis":{"url":"redis://127.0.0.1","password":"{env.SITEGATE_TEST_UNSET}"}}}`, "redis password"},
		{"bad redis url", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"keys":["` + testSessionKey + `"],"redis":{"url":"http://u:hunter2@127.0.0.1"}}}`, "redis url scheme"},
		{"relative identity url", `{"identity":{"dialect":"ece","url":"/ece"}}`, "identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := json.Unmarshal([]byte(tc.json), &h); err != nil {
				t.Fatal(err)
			}
			err := h.Provision(ctx)
			defer h.Cleanup()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("provision: %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "c2hvcnQ") {
				t.Errorf("provision error leaks a secret: %v", err)
			}
		})
	}

	for _, tc := range []struct{ name, json, want string }{
		{"anonymous with token options", `{"anonymous":true,"issuer":"https://idp.test"}`, "anonymous takes no"},
		{"bad identity header name", `{"introspection":{"url":"https://idp.test/self"},"identity_headers":{"X User":"{http.auth.user.id}"}}`, "not a valid header name"},
		{"identity header owned by site_context", `{"introspection":{"url":"https://idp.test/self"},"identity_headers":{"x_site_context":"x"}}`, "set by site_context"},
		{"session without identity", `{"session":{}}`, "session needs an identity"},
		{"anonymous with identity", `{"anonymous":true,"identity":{"dialect":"ece","url":"http://ece"}}`, "anonymous takes no identity"},
		{"fabric_v1 without account", `{"identity":{"dialect":"fabric_v1","url":"http://idp"}}`, "identity fabric_v1 needs site_context account"},
		{"unknown dialect", `{"identity":{"dialect":"saml","url":"http://idp"}}`, `unknown dialect "saml"`},
		{"identity without url", `{"identity":{"dialect":"ece"}}`, "identity needs a URL"},
		{"redis without keys", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"redis":{"url":"redis://127.0.0.1"}}}`, "needs at least one key"},
		{"bad cookie name", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"cookie":"a;b"}}`, "not a valid cookie name"},
		{"bad endpoints", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"endpoints":"auth"}}`, "not a path prefix"},
		{"bad origin", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"allow_origins":["https://app.example/path"]}}`, "not an origin"},
		{"oauth2 without client", `{"identity":{"dialect":"oauth2","url":"http://idp/oauth2/default"}}`, "needs the user app's client_id"},
		{"oauth2 options on ece", `{"identity":{"dialect":"ece","url":"http://ece","client_id":"x"}}`, "identity ece takes no OAuth2 options"},
		{"service user on the gateway", `{"identity":{"dialect":"oauth2","url":"http://idp","client_id":"x","username":"svc","password":"pw"}}`, "are for sitegate_service"},
		{"login_redirect without oauth2", `{"identity":{"dialect":"ece","url":"http://ece"},"session":{"login_redirect":true}}`, "login_redirect needs identity oauth2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := json.Unmarshal([]byte(tc.json), &h); err != nil {
				t.Fatal(err)
			}
			if err := h.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// testSessionKey is a valid session key (32 bytes, base64).
const testSessionKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
