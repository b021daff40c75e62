package caddymodule

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sitegate/sitegate/upstream/emulator"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("identity_emulator", parseEmulator)
	// A terminal handler, like file_server: it answers everything it is given.
	httpcaddyfile.RegisterDirectiveOrder("identity_emulator", httpcaddyfile.After, "acme_server")
}

func parseEmulator(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(IdentityEmulator)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the emulator from Caddyfile tokens. Syntax:
//
//	identity_emulator [<matcher>] {
//	    api_key <key>
//	    user <username> <password> [account <id>] [{
//	        account     <24-character account id>
//	        id          <24-hex user id>
//	        name        <first> [<last>]
//	        email       <address>
//	        roles       <role...>
//	        deactivated
//	    }]
//	    client <id> [<secret>] [{
//	        redirect_uri <uri...>
//	    }]
//	    access_lifetime       <duration>
//	    refresh_lifetime      <duration>
//	    client_token_lifetime <duration>
//	    keep_refresh_tokens
//	    audience <aud>
//	    issuer   <base url>
//	    schema_shapes
//	}
//
// user and client repeat. Secrets may be placeholders such as {env.DEMO_PASSWORD}; they are
// resolved when the config loads, not here, so they stay out of the adapted JSON.
func (m *IdentityEmulator) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "api_key":
			if !d.AllArgs(&m.APIKey) {
				return d.ArgErr()
			}
		case "user":
			u, err := parseEmulatorUser(d)
			if err != nil {
				return err
			}
			m.Users = append(m.Users, u)
		case "client":
			c, err := parseEmulatorClient(d)
			if err != nil {
				return err
			}
			m.Clients = append(m.Clients, c)
		case "access_lifetime":
			if err := parseDuration(d, &m.AccessLifetime); err != nil {
				return err
			}
		case "refresh_lifetime":
			if err := parseDuration(d, &m.RefreshLifetime); err != nil {
				return err
			}
		case "client_token_lifetime":
			if err := parseDuration(d, &m.ClientTokenLifetime); err != nil {
				return err
			}
		case "keep_refresh_tokens":
			if d.NextArg() {
				return d.ArgErr()
			}
			m.KeepRefreshTokens = true
		case "audience":
			if !d.AllArgs(&m.Audience) {
				return d.ArgErr()
			}
		case "issuer":
			if !d.AllArgs(&m.Issuer) {
				return d.ArgErr()
			}
		case "schema_shapes":
			if d.NextArg() {
				return d.ArgErr()
			}
			m.SchemaShapes = true
		default:
			return d.Errf("unrecognized identity_emulator option %q", d.Val())
		}
	}
	return nil
}

func parseEmulatorUser(d *caddyfile.Dispenser) (emulator.User, error) {
	var u emulator.User
	if !d.NextArg() {
		return u, d.Err("user needs a username and a password")
	}
	u.Username = d.Val()
	if !d.NextArg() {
		return u, d.Errf("user %q needs a password", u.Username)
	}
	u.Password = d.Val()
	for d.NextArg() {
		if d.Val() != "account" || !d.NextArg() {
			return u, d.Errf("user %q: expected 'account <id>' after the password, got %q", u.Username, d.Val())
		}
		u.Account = d.Val()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "account":
			if !d.AllArgs(&u.Account) {
				return u, d.ArgErr()
			}
		case "id":
			if !d.AllArgs(&u.ID) {
				return u, d.ArgErr()
			}
		case "name":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return u, d.Err("name takes a first name and optionally a last name")
			}
			u.FirstName = args[0]
			if len(args) == 2 {
				u.LastName = args[1]
			}
		case "email":
			if !d.AllArgs(&u.Email) {
				return u, d.ArgErr()
			}
		case "roles":
			u.Roles = append(u.Roles, d.RemainingArgs()...)
			if len(u.Roles) == 0 {
				return u, d.ArgErr()
			}
		case "deactivated":
			if d.NextArg() {
				return u, d.ArgErr()
			}
			u.Deactivated = true
		default:
			return u, d.Errf("unrecognized user option %q", d.Val())
		}
	}
	return u, nil
}

func parseEmulatorClient(d *caddyfile.Dispenser) (emulator.Client, error) {
	var c emulator.Client
	if !d.NextArg() {
		return c, d.Err("client needs an id")
	}
	c.ID = d.Val()
	if d.NextArg() {
		c.Secret = d.Val()
	}
	if d.NextArg() {
		return c, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "redirect_uri":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return c, d.ArgErr()
			}
			c.RedirectURIs = append(c.RedirectURIs, args...)
		default:
			return c, d.Errf("unrecognized client option %q", d.Val())
		}
	}
	return c, nil
}

// parseDuration reads one duration argument into dst.
func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil {
		return d.Errf("%s: bad duration %q: %v", name, d.Val(), err)
	}
	if dur <= 0 {
		return d.Errf("%s: duration must be positive, got %q", name, d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = caddy.Duration(dur)
	return nil
}

var _ caddyfile.Unmarshaler = (*IdentityEmulator)(nil)
