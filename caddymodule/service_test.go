package caddymodule

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestServiceCaddyfile(t *testing.T) {
	mh, err := parseService(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(`sitegate_service {
		identity oauth2 https://acme.login.fabric.inc/oauth2/aus123 {
			client_id {env.CLIENT_ID}
			client_secret {env.CLIENT_SECRET}
			scope s2s
			token_url https://acme.login.fabric.inc/oauth2/aus123/v1/token
			timeout 5s
		}
		store redis redis://127.0.0.1:6379/0
		key {env.SITEGATE_KEY}
		refresh_before 2m
		site_context {
			account 5f689caa4216e7000750d1ef
			channel 12
			fabric_v3_headers
		}
		keep_authorization
	}`)})
	want := `{"identity":{"dialect":"oauth2","url":"https://acme.login.fabric.inc/oauth2/aus123","client_id":"{env.CLIENT_ID}",` +
		`"client_secret":"{env.CLIENT_SECRET}","scopes":["s2s"],"token_url":"https://acme.login.fabric.inc/oauth2/aus123/v1/token","timeout":5000000000},` +
		`"redis":{"url":"redis://127.0.0.1:6379/0"},"keys":["{env.SITEGATE_KEY}"],"refresh_before":120000000000,` +
		`"site_context":{"account":"5f689caa4216e7000750d1ef","channel":12,"fabric_v3_headers":true},"keep_authorization":true}`
	if got := string(caddyconfig.JSON(mh, nil)); err != nil || got != want {
		t.Errorf("adapted JSON: %v\n got: %s\nwant: %s", err, got, want)
	}

	mh, err = parseService(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(`sitegate_service {
		identity fabric_v1 https://prod01-apigw.acme.fabric.zone {
			username svc@acme.example
			password {env.SVC_PASSWORD}
			api_key {env.FABRIC_API_KEY}
		}
		site_context {
			account 5f689caa4216e7000750d1ef
		}
	}`)})
	want = `{"identity":{"dialect":"fabric_v1","url":"https://prod01-apigw.acme.fabric.zone","api_key":"{env.FABRIC_API_KEY}",` +
		`"username":"svc@acme.example","password":"{env.SVC_PASSWORD}"},"site_context":{"account":"5f689caa4216e7000750d1ef"}}`
	if got := string(caddyconfig.JSON(mh, nil)); err != nil || got != want {
		t.Errorf("service user: %v\n got: %s\nwant: %s", err, got, want)
	}
}

func TestOAuth2IdentityCaddyfile(t *testing.T) {
	mh, err := parseSitegate(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(`sitegate {
		identity oauth2 https://acme.login.fabric.inc/oauth2/default {
			client_id 0oa3asajdykUunEjL697
			scope openid offline_access email
			authorize_url https://login.acme.example/authorize
			revoke_url https://login.acme.example/revoke
			redirect_uri https://shop.acme.example/.sitegate/callback
		}
		session {
			login_redirect
		}
	}`)})
	want := `{"identity":{"dialect":"oauth2","url":"https://acme.login.fabric.inc/oauth2/default","client_id":"0oa3asajdykUunEjL697",` +
		`"scopes":["openid","offline_access","email"],"authorize_url":"https://login.acme.example/authorize",` +
		`"revoke_url":"https://login.acme.example/revoke","redirect_uri":"https://shop.acme.example/.sitegate/callback"},` +
		`"session":{"login_redirect":true}}`
	if got := string(caddyconfig.JSON(mh, nil)); err != nil || got != want {
		t.Errorf("adapted JSON: %v\n got: %s\nwant: %s", err, got, want)
	}
}

func TestServiceCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
		line             int
	}{
		{"unknown option", "colour blue", `unrecognized sitegate_service option "colour"`, 3},
		{"no identity", "keep_authorization", "sitegate_service needs an identity", 4},
		{"unknown dialect", "identity saml https://idp", `identity: unknown dialect "saml"`, 3},
		{"unknown store", "store etcd", `unknown store "etcd" (want memory or redis)`, 3},
		{"bad refresh_before", "refresh_before soon", `refresh_before: bad duration "soon"`, 3},
		{"flag with argument", "keep_authorization yes", "wrong argument count", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := "http://127.0.0.1:8082 {\n\tsitegate_service {\n\t" + tc.body + "\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
			at := fmt.Sprintf(", at Caddyfile:%d", tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), at) {
				t.Fatalf("error %v, want it to contain %q and end with %q", err, tc.want, at)
			}
		})
	}
}

// TestServiceDirectiveOrder checks that sitegate_service runs before reverse_proxy without an
// order option.
func TestServiceDirectiveOrder(t *testing.T) {
	cfg := "http://127.0.0.1:8082 {\n\treverse_proxy 127.0.0.1:8091\n\tsitegate_service {\n\t\tidentity oauth2 http://idp {\n\t\t\tclient_id a\n\t\t\tclient_secret b\n\t\t}\n\t}\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if i, j := strings.Index(s, `"handler":"sitegate_service"`), strings.Index(s, `"handler":"reverse_proxy"`); i < 0 || j < 0 || i > j {
		t.Fatalf("sitegate_service does not come before reverse_proxy:\n%s", s)
	}
}

func TestServiceValidate(t *testing.T) {
	const oauth = `"identity":{"dialect":"oauth2","url":"http://idp/oauth2/aus1","client_id":"app","client_secret":"s3cret"}`
	for _, tc := range []struct{ name, json, want string }{
		{"no identity", `{}`, "needs an identity"},
		{"unknown dialect", `{"identity":{"dialect":"saml","url":"http://idp"}}`, `unknown dialect "saml"`},
		{"no url", `{"identity":{"dialect":"oauth2","client_id":"a","client_secret":"b"}}`, "identity needs a URL"},
		{"oauth2 without secret", `{"identity":{"dialect":"oauth2","url":"http://idp","client_id":"a"}}`, "needs client_id and client_secret"},
		{"oauth2 with a user", `{"identity":{"dialect":"oauth2","url":"http://idp","client_id":"a","client_secret":"b","username":"u"}}`, "takes no username"},
		{"user sign-in options", `{"identity":{"dialect":"oauth2","url":"http://idp","client_id":"a","client_secret":"b","redirect_uri":"http://x/cb"}}`, "not for sitegate_service"},
		{"service user without password", `{"identity":{"dialect":"ece","url":"http://ece","username":"svc"}}`, "needs the service user's username and password"},
		{"client options on ece", `{"identity":{"dialect":"ece","url":"http://ece","username":"svc","password":"pw","client_id":"a"}}`, "takes no client_id"},
		{"fabric_v1 without account", `{"identity":{"dialect":"fabric_v1","url":"http://v1","username":"svc","password":"pw"}}`, "needs site_context account"},
		{"account_claim", `{` + oauth + `,"site_context":{"account_claim":"tenant"}}`, "account_claim does not apply"},
		{"redis without key", `{` + oauth + `,"redis":{"url":"redis://127.0.0.1"}}`, "needs at least one key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Service
			if err := json.Unmarshal([]byte(tc.json), &s); err != nil {
				t.Fatal(err)
			}
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate: %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("validate error leaks the secret: %v", err)
			}
		})
	}
	var ok Service
	if err := json.Unmarshal([]byte(`{`+oauth+`}`), &ok); err != nil || ok.Validate() != nil {
		t.Fatalf("a client_credentials sidecar does not validate: %v %v", err, ok.Validate())
	}
}
