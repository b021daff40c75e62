package caddymodule

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sitegate/sitegate/upstream/emulator"
)

func init() { caddy.RegisterModule(IdentityEmulator{}) }

// IdentityEmulator serves an in-memory emulator of fabric Identity: the v1 API under
// /api-commerceIdentity, User APIs 2.0 under /ums/v2, OAuth2 authorization servers under
// /oauth2/{server} and ECE-style authentication under /api/v1/users/auth, plus a control API under
// /_emulator/ that counts calls and injects faults. It is for development and tests only: it keeps
// everything in memory and its control API must never be reachable from outside the host.
//
// It answers every request it gets (unknown paths with a JSON 404) and never calls the next
// handler.
type IdentityEmulator struct {
	// APIKey, when set, is required in the x-api-key header of the v1 endpoints that fabric
	// protects with an API key. Placeholders such as {env.FABRIC_API_KEY} are resolved when the
	// config loads. Default: no key required.
	APIKey string `json:"api_key,omitempty"`

	// Users seeded at start. Passwords may use placeholders. More users can be created
	// through the v1 user endpoints.
	Users []emulator.User `json:"users,omitempty"`

	// Clients are the OAuth2 applications: a client with a secret is confidential (system apps,
	// and user apps without PKCE); one without is public and must use PKCE. Secrets may use
	// placeholders.
	Clients []emulator.Client `json:"clients,omitempty"`

	// AccessLifetime of user access tokens (v1, OAuth2 and ECE). Default: 30m.
	AccessLifetime caddy.Duration `json:"access_lifetime,omitempty"`

	// RefreshLifetime of refresh tokens (v1 and OAuth2). Rotated refresh tokens keep the
	// expiry of the first. Default: 45 days.
	RefreshLifetime caddy.Duration `json:"refresh_lifetime,omitempty"`

	// ClientTokenLifetime of client_credentials tokens. Default: 10m.
	ClientTokenLifetime caddy.Duration `json:"client_token_lifetime,omitempty"`

	// KeepRefreshTokens turns refresh-token rotation off. By default every refresh issues a new
	// refresh token and the one it replaced is rejected if presented again.
	KeepRefreshTokens bool `json:"keep_refresh_tokens,omitempty"`

	// Audience is the aud claim of OAuth2 access tokens. Default: api://default.
	Audience string `json:"audience,omitempty"`

	// Issuer is the base URL OAuth2 issuers are built from (issuer + "/oauth2/" + server).
	// Default: the scheme and host of each request.
	Issuer string `json:"issuer,omitempty"`

	// SchemaShapes makes v1 responses use the OpenAPI schema's shapes (roles an array, name an
	// object) instead of the shapes of the documents' examples (both strings).
	SchemaShapes bool `json:"schema_shapes,omitempty"`

	emulator *emulator.Emulator
}

// CaddyModule returns the Caddy module information.
func (IdentityEmulator) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.identity_emulator",
		New: func() caddy.Module { return new(IdentityEmulator) },
	}
}

// Provision resolves placeholders in the secrets and builds the emulator.
func (m *IdentityEmulator) Provision(ctx caddy.Context) error {
	cfg := emulator.Config{
		Users:               make([]emulator.User, len(m.Users)),
		Clients:             make([]emulator.Client, len(m.Clients)),
		AccessLifetime:      time.Duration(m.AccessLifetime),
		RefreshLifetime:     time.Duration(m.RefreshLifetime),
		ClientTokenLifetime: time.Duration(m.ClientTokenLifetime),
		KeepRefreshTokens:   m.KeepRefreshTokens,
		Audience:            m.Audience,
		Issuer:              m.Issuer,
		SchemaShapes:        m.SchemaShapes,
	}
	var err error
	if cfg.APIKey, err = resolvePlaceholders("api_key", m.APIKey); err != nil {
		return err
	}
	for i, u := range m.Users {
		if u.Password, err = resolvePlaceholders("user "+u.Username+": password", u.Password); err != nil {
			return err
		}
		cfg.Users[i] = u
	}
	for i, c := range m.Clients {
		if c.Secret, err = resolvePlaceholders("client "+c.ID+": secret", c.Secret); err != nil {
			return err
		}
		cfg.Clients[i] = c
	}
	m.emulator, err = emulator.New(cfg, ctx.Logger())
	return err
}

// Validate rejects negative lifetimes, which JSON config can carry.
func (m *IdentityEmulator) Validate() error {
	for name, d := range map[string]caddy.Duration{
		"access_lifetime":       m.AccessLifetime,
		"refresh_lifetime":      m.RefreshLifetime,
		"client_token_lifetime": m.ClientTokenLifetime,
	} {
		if d < 0 {
			return fmt.Errorf("%s must not be negative", name)
		}
	}
	return nil
}

// ServeHTTP answers the request from the emulator.
func (m *IdentityEmulator) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	m.emulator.ServeHTTP(w, r)
	return nil
}

var (
	_ caddy.Provisioner           = (*IdentityEmulator)(nil)
	_ caddy.Validator             = (*IdentityEmulator)(nil)
	_ caddyhttp.MiddlewareHandler = (*IdentityEmulator)(nil)
)
