package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sitegate/sitegate/upstream/emulator"
)

const (
	account = "5f689caa4216e7000750d1ef"
	site    = `{"account":"5f689caa4216e7000750d1ef"}`
	apiKey  = "test-key"
)

// identity starts the emulator with a user pat and a deactivated user gone.
func identity(t *testing.T, schemaShapes bool) string {
	t.Helper()
	e, err := emulator.New(emulator.Config{
		APIKey: apiKey, SchemaShapes: schemaShapes,
		Users: []emulator.User{
			{Username: "pat", Password: "pat-password", Account: account, FirstName: "Pat", LastName: "Kake", Roles: []string{"customer", "buyer"}},
			{Username: "gone", Password: "gone-password", Account: account, Deactivated: true},
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return srv.URL
}

// control calls the emulator's control API.
func control(t *testing.T, base, method, path, body string) {
	t.Helper()
	req, _ := http.NewRequest(method, base+"/_emulator/"+path, strings.NewReader(body))
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode >= 300 {
		t.Fatalf("control %s %s: %v %v", method, path, err, res)
	}
	res.Body.Close()
}

// wantKind checks err wraps kind and holds none of the secrets.
func wantKind(t *testing.T, err, kind error, secrets ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v, want %v", err, kind)
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("the error %q holds a secret", err)
		}
	}
}

func TestFabricV1(t *testing.T) {
	for _, shapes := range []bool{false, true} {
		base := identity(t, shapes)
		v1, err := NewFabricV1(Options{BaseURL: base, APIKey: apiKey, SiteContext: site, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		tok, err := v1.Login(ctx, "pat", "pat-password")
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		u := tok.User
		if len(u.ID) != 24 || u.Account != account || u.Name != "Pat Kake" || u.Type != "customer" ||
			strings.Join(u.Roles, ",") != "customer,buyer" {
			t.Errorf("user (schema shapes %v): %+v", shapes, u)
		}
		if d := time.Until(tok.AccessExpiry); d < 29*time.Minute || d > 31*time.Minute {
			t.Errorf("access expiry in %s, want the token's 30m", d)
		}
		if d := time.Until(tok.RefreshExpiry); d < 44*24*time.Hour {
			t.Errorf("refresh expiry in %s, want the token's 45 days", d)
		}

		next, err := v1.Refresh(ctx, tok)
		if err != nil || next.RefreshToken == tok.RefreshToken || next.AccessToken == "" || next.User.ID != u.ID {
			t.Fatalf("refresh: %v", err)
		}
		_, err = v1.Refresh(ctx, tok) // rotated away
		wantKind(t, err, ErrRejected, tok.RefreshToken)
		if e := new(Error); !errors.As(err, &e) || e.Code != "LOCAL_AUTH_FAILED" || e.Status != 400 {
			t.Fatalf("rotated refresh token: %#v", err)
		}
	}
}

func TestFabricV1Failures(t *testing.T) {
	base := identity(t, false)
	ctx := context.Background()
	v1, _ := NewFabricV1(Options{BaseURL: base, APIKey: apiKey, SiteContext: site, Timeout: 500 * time.Millisecond})
	tok, err := v1.Login(ctx, "pat", "pat-password")
	if err != nil {
		t.Fatal(err)
	}

	_, err = v1.Login(ctx, "pat", "wrong-password")
	wantKind(t, err, ErrRejected, "wrong-password")
	_, err = v1.Login(ctx, "gone", "gone-password")
	wantKind(t, err, ErrRejected, "gone-password")

	// A refused API key is sitegate's configuration, not the user's credentials.
	badKey, _ := NewFabricV1(Options{BaseURL: base, APIKey: "nope", SiteContext: site})
	_, err = badKey.Refresh(ctx, tok)
	wantKind(t, err, ErrUnavailable, tok.RefreshToken)

	for _, fault := range []string{`{"endpoint":"v1.refresh","status":503}`, `{"endpoint":"v1.refresh","drop":true}`, `{"endpoint":"v1.refresh","latency":"2s"}`} {
		control(t, base, "POST", "faults", fault)
		_, err = v1.Refresh(ctx, tok)
		wantKind(t, err, ErrUnavailable, tok.RefreshToken)
		control(t, base, "DELETE", "faults", "")
	}
	// The refresh token survived the failures: none of them used it up.
	if _, err := v1.Refresh(ctx, tok); err != nil {
		t.Fatalf("refresh after the outage: %v", err)
	}

	control(t, base, "PATCH", "users/pat", `{"active":false}`)
	_, err = v1.Login(ctx, "pat", "pat-password")
	wantKind(t, err, ErrRejected)

	if _, err := NewFabricV1(Options{BaseURL: base}); err == nil {
		t.Error("a v1 client without x-site-context was built")
	}
	if _, err := NewFabricV1(Options{BaseURL: "identity.local", SiteContext: site}); err == nil {
		t.Error("a relative base URL was accepted")
	}
}

func TestECE(t *testing.T) {
	base := identity(t, false)
	ctx := context.Background()
	ece, err := NewECE(Options{BaseURL: base, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ece.Login(ctx, "pat", "pat-password")
	if err != nil || tok.User.ID != "pat" || tok.RefreshToken != "" {
		t.Fatalf("login: %v %+v", err, tok)
	}
	if d := time.Until(tok.AccessExpiry); d < 29*time.Minute || d > 31*time.Minute {
		t.Errorf("session_expiration_time in %s, want 30m", d)
	}
	_, err = ece.Login(ctx, "pat", "wrong-password")
	wantKind(t, err, ErrRejected, "wrong-password")

	next, err := ece.Refresh(ctx, tok)
	if err != nil || next.AccessToken == tok.AccessToken {
		t.Fatalf("refresh: %v", err)
	}
	_, err = ece.Refresh(ctx, tok) // already refreshed
	wantKind(t, err, ErrRejected, tok.AccessToken)

	for status, code := range map[string]string{"501": "authc.no_authentication_cluster", "502": "authc.authentication_cluster_error"} {
		control(t, base, "POST", "faults", `{"endpoint":"ece.refresh","status":`+status+`}`)
		_, err = ece.Refresh(ctx, next)
		wantKind(t, err, ErrUnavailable, next.AccessToken)
		if e := new(Error); !errors.As(err, &e) || e.Code != code {
			t.Errorf("%s: code %v", status, err)
		}
		control(t, base, "DELETE", "faults", "")
	}

	if err := ece.Logout(ctx, next); err != nil {
		t.Fatalf("logout: %v", err)
	}
	_, err = ece.Refresh(ctx, next)
	wantKind(t, err, ErrRejected)

	// A token must be refreshed before it expires.
	fresh, err := ece.Login(ctx, "pat", "pat-password")
	if err != nil {
		t.Fatal(err)
	}
	control(t, base, "PUT", "clock", `{"skew":"31m"}`)
	_, err = ece.Refresh(ctx, fresh)
	wantKind(t, err, ErrRejected)
}

// TestAnswerCap: an answer over the cap is unusable, not read whole.
func TestAnswerCap(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"token":"` + strings.Repeat("a", maxAnswer) + `"}`))
	}))
	defer srv.Close()
	ece, _ := NewECE(Options{BaseURL: srv.URL})
	_, err := ece.Login(context.Background(), "pat", "pat-password")
	wantKind(t, err, ErrUnavailable, "pat-password")
}
