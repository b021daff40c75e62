package caddymodule

import (
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sitegate/sitegate/upstream/emulator"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("sitegate", parseSitegate)
	// After basic_auth (so rate_limit, ordered before it, still throttles first), before
	// request_header, encode, handle and reverse_proxy.
	httpcaddyfile.RegisterDirectiveOrder("sitegate", httpcaddyfile.After, "basic_auth")
	// The sidecar: the same place, before reverse_proxy.
	httpcaddyfile.RegisterHandlerDirective("sitegate_service", parseService)
	httpcaddyfile.RegisterDirectiveOrder("sitegate_service", httpcaddyfile.After, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("identity_emulator", parseEmulator)
	// A terminal handler, like file_server: it answers everything it is given.
	httpcaddyfile.RegisterDirectiveOrder("identity_emulator", httpcaddyfile.After, "acme_server")
}

func parseSitegate(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the gateway from Caddyfile tokens. Syntax:
//
//	sitegate [<matcher>] {
//	    anonymous
//
//	    issuer     <url>
//	    audience   <aud...>
//	    algorithms <alg...>
//	    leeway     <duration>
//	    jwks       <url...>
//	    discovery  <issuer url>
//	    public_key <pem file...>
//	    jwks_refresh <duration>
//
//	    introspect <url> [{
//	        header         <name> <value>
//	        max_ttl        <duration>
//	        failure_ttl    <duration>
//	        max_concurrent <n>
//	    }]
//
//	    site_context {
//	        account       <id>
//	        account_claim <claim>
//	        channel       <n>
//	        stage         <name>
//	        date          now
//	        allow_client  <channel|stage|date...>
//	        fabric_v3_headers
//	    }
//
//	    identity_header <name> <value>
//	    use_handle_errors
//
//	    identity <fabric_v1|ece> <base url> [{
//	        api_key        <key>
//	        timeout        <duration>
//	        max_concurrent <n>
//	    }]
//	    identity oauth2 <issuer url> {
//	        client_id      <id>
//	        client_secret  <secret>
//	        scope          <scope...>
//	        authorize_url  <url>
//	        token_url      <url>
//	        revoke_url     <url>
//	        redirect_uri   <url>
//	        timeout        <duration>
//	        max_concurrent <n>
//	    }
//	    session {
//	        store memory
//	        store redis [<url>] [{
//	            url              <redis:// or rediss:// url>
//	            sentinel         <master name> <address...>
//	            cluster          <address...>
//	            username         <name>
//	            password         <password>
//	            db               <n>
//	            tls
//	            key_prefix       <prefix>
//	            timeout          <duration>
//	            disable_identity
//	        }]
//	        key            <key...>
//	        idle_timeout   <duration>
//	        lifetime       <duration>
//	        refresh_before <duration>
//	        cookie         <name>
//	        endpoints      <path prefix>
//	        allow_origin   <origin...>
//	        login_redirect
//	    }
//	}
//
// audience, algorithms, jwks, public_key, allow_client, key and allow_origin accumulate; identity_header and
// header repeat. Placeholders in URLs and introspection headers ({env.API_KEY}) are resolved
// when the config loads.
func (m *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "anonymous":
			err = flag(d, &m.Anonymous)
		case "issuer":
			err = oneArg(d, &m.Issuer)
		case "audience":
			err = someArgs(d, &m.Audiences)
		case "algorithms":
			err = someArgs(d, &m.Algorithms)
		case "leeway":
			err = parseDuration(d, &m.Leeway)
		case "jwks":
			err = someArgs(d, &m.JWKSURLs)
		case "discovery":
			err = oneArg(d, &m.Discovery)
		case "public_key":
			err = someArgs(d, &m.PublicKeyFiles)
		case "jwks_refresh":
			err = parseDuration(d, &m.JWKSRefresh)
		case "introspect":
			m.Introspection, err = parseIntrospection(d)
		case "site_context":
			m.SiteContext, err = parseSiteContext(d)
		case "identity_header":
			var name, value string
			if !d.AllArgs(&name, &value) {
				return d.Err("identity_header takes a header name and a value")
			}
			if m.IdentityHeaders == nil {
				m.IdentityHeaders = map[string]string{}
			}
			if _, dup := m.IdentityHeaders[name]; dup {
				return d.Errf("identity_header %s is set twice", name)
			}
			m.IdentityHeaders[name] = value
		case "use_handle_errors":
			err = flag(d, &m.UseHandleErrors)
		case "identity":
			m.Identity, err = parseIdentity(d)
		case "session":
			m.Session, err = parseSession(d)
		default:
			return d.Errf("unrecognized sitegate option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseService(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Service)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the sidecar from Caddyfile tokens. Syntax:
//
//	sitegate_service [<matcher>] {
//	    identity oauth2 <issuer url> {
//	        client_id     <id>
//	        client_secret <secret>
//	        scope         <scope...>
//	        token_url     <url>
//	        timeout       <duration>
//	    }
//	    identity <fabric_v1|ece> <base url> {
//	        username <name>
//	        password <password>
//	        api_key  <key>
//	        timeout  <duration>
//	    }
//	    store memory
//	    store redis [<url>] [{ … as in session }]
//	    key            <key...>
//	    refresh_before <duration>
//	    site_context   { … as in sitegate, without account_claim }
//	    keep_authorization
//	}
func (m *Service) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "identity":
			m.Identity, err = parseIdentity(d)
		case "store":
			m.Redis, err = parseStore(d)
		case "key":
			err = someArgs(d, &m.Keys)
		case "refresh_before":
			err = parseDuration(d, &m.RefreshBefore)
		case "site_context":
			m.SiteContext, err = parseSiteContext(d)
		case "keep_authorization":
			err = flag(d, &m.KeepAuthorization)
		default:
			return d.Errf("unrecognized sitegate_service option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if m.Identity == nil {
		return d.Err("sitegate_service needs an identity")
	}
	return nil
}

func parseIntrospection(d *caddyfile.Dispenser) (*Introspection, error) {
	in := &Introspection{}
	if !d.NextArg() {
		return nil, d.Err("introspect needs the URL of an identity endpoint")
	}
	in.URL = d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "header":
			var name, value string
			if !d.AllArgs(&name, &value) {
				return nil, d.Err("header takes a name and a value")
			}
			if in.Headers == nil {
				in.Headers = map[string]string{}
			}
			in.Headers[name] = value
		case "max_ttl":
			err = parseDuration(d, &in.MaxTTL)
		case "failure_ttl":
			err = parseDuration(d, &in.FailureTTL)
		case "max_concurrent":
			err = positiveInt(d, &in.MaxConcurrent)
		default:
			return nil, d.Errf("unrecognized introspect option %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return in, nil
}

func parseIdentity(d *caddyfile.Dispenser) (*Identity, error) {
	id := &Identity{}
	if !d.AllArgs(&id.Dialect, &id.URL) {
		return nil, d.Err("identity takes a dialect (fabric_v1, ece or oauth2) and the service's base URL")
	}
	if !slices.Contains(dialects, id.Dialect) {
		return nil, d.Errf("identity: unknown dialect %q (want fabric_v1, ece or oauth2)", id.Dialect)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "api_key":
			err = oneArg(d, &id.APIKey)
		case "client_id":
			err = oneArg(d, &id.ClientID)
		case "client_secret":
			err = oneArg(d, &id.ClientSecret)
		case "scope":
			err = someArgs(d, &id.Scopes)
		case "authorize_url":
			err = oneArg(d, &id.AuthorizeURL)
		case "token_url":
			err = oneArg(d, &id.TokenURL)
		case "revoke_url":
			err = oneArg(d, &id.RevokeURL)
		case "redirect_uri":
			err = oneArg(d, &id.RedirectURI)
		case "username":
			err = oneArg(d, &id.Username)
		case "password":
			err = oneArg(d, &id.Password)
		case "timeout":
			err = parseDuration(d, &id.Timeout)
		case "max_concurrent":
			err = positiveInt(d, &id.MaxConcurrent)
		default:
			return nil, d.Errf("unrecognized identity option %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return id, nil
}

func parseSession(d *caddyfile.Dispenser) (*Sessions, error) {
	s := &Sessions{}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "store":
			s.Redis, err = parseStore(d)
		case "key":
			err = someArgs(d, &s.Keys)
		case "idle_timeout":
			err = parseDuration(d, &s.IdleTimeout)
		case "lifetime":
			err = parseDuration(d, &s.Lifetime)
		case "refresh_before":
			err = parseDuration(d, &s.RefreshBefore)
		case "cookie":
			err = oneArg(d, &s.Cookie)
		case "endpoints":
			err = oneArg(d, &s.Endpoints)
		case "allow_origin":
			err = someArgs(d, &s.AllowOrigins)
		case "login_redirect":
			err = flag(d, &s.LoginRedirect)
		default:
			return nil, d.Errf("unrecognized session option %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// parseStore parses "store memory" (nil) or "store redis …".
func parseStore(d *caddyfile.Dispenser) (*Redis, error) {
	if !d.NextArg() {
		return nil, d.Err("store takes memory or redis")
	}
	switch kind := d.Val(); kind {
	case "memory":
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		return nil, nil
	case "redis":
		return parseRedis(d)
	default:
		return nil, d.Errf("unknown store %q (want memory or redis)", kind)
	}
}

func parseRedis(d *caddyfile.Dispenser) (*Redis, error) {
	rc := &Redis{}
	if d.NextArg() {
		rc.URL = d.Val()
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "url":
			err = oneArg(d, &rc.URL)
		case "sentinel":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return nil, d.Err("sentinel takes the master name and one or more sentinel addresses")
			}
			rc.MasterName, rc.Sentinels = args[0], append(rc.Sentinels, args[1:]...)
		case "cluster":
			err = someArgs(d, &rc.Cluster)
		case "username":
			err = oneArg(d, &rc.Username)
		case "password":
			err = oneArg(d, &rc.Password)
		case "db":
			var n string
			if err = oneArg(d, &n); err == nil {
				if rc.DB, err = strconv.Atoi(n); err != nil || rc.DB < 0 {
					return nil, d.Errf("db takes a database number, got %q", n)
				}
			}
		case "tls":
			err = flag(d, &rc.TLS)
		case "key_prefix":
			err = oneArg(d, &rc.KeyPrefix)
		case "timeout":
			err = parseDuration(d, &rc.Timeout)
		case "disable_identity":
			err = flag(d, &rc.DisableIdentity)
		default:
			return nil, d.Errf("unrecognized redis option %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	modes := 0
	for _, set := range []bool{rc.URL != "", len(rc.Sentinels) > 0, len(rc.Cluster) > 0} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return nil, d.Err("redis needs exactly one of a url, sentinel or cluster")
	}
	return rc, nil
}

func parseSiteContext(d *caddyfile.Dispenser) (*SiteContext, error) {
	sc := &SiteContext{}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "account":
			err = oneArg(d, &sc.Account)
		case "account_claim":
			err = oneArg(d, &sc.AccountClaim)
		case "channel":
			err = positiveInt(d, &sc.Channel)
		case "stage":
			err = oneArg(d, &sc.Stage)
		case "date":
			var v string
			if err = oneArg(d, &v); err == nil && v != "now" {
				err = d.Errf("date takes 'now', got %q", v)
			}
			sc.Date = true
		case "allow_client":
			err = someArgs(d, &sc.AllowClient)
		case "fabric_v3_headers":
			err = flag(d, &sc.FabricV3Headers)
		default:
			return nil, d.Errf("unrecognized site_context option %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// flag reads an option that takes no argument.
func flag(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

// oneArg reads an option that takes exactly one argument.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.AllArgs(dst) {
		return d.ArgErr()
	}
	return nil
}

// someArgs appends an option's one or more arguments.
func someArgs(d *caddyfile.Dispenser, dst *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	*dst = append(*dst, args...)
	return nil
}

// positiveInt reads an option's one positive integer argument.
func positiveInt(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return d.Errf("%s takes a positive integer, got %q", name, s)
	}
	*dst = n
	return nil
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
		var err error
		switch d.Val() {
		case "api_key":
			err = oneArg(d, &m.APIKey)
		case "user":
			var u emulator.User
			if u, err = parseEmulatorUser(d); err == nil {
				m.Users = append(m.Users, u)
			}
		case "client":
			var c emulator.Client
			if c, err = parseEmulatorClient(d); err == nil {
				m.Clients = append(m.Clients, c)
			}
		case "access_lifetime":
			err = parseDuration(d, &m.AccessLifetime)
		case "refresh_lifetime":
			err = parseDuration(d, &m.RefreshLifetime)
		case "client_token_lifetime":
			err = parseDuration(d, &m.ClientTokenLifetime)
		case "keep_refresh_tokens":
			err = flag(d, &m.KeepRefreshTokens)
		case "audience":
			err = oneArg(d, &m.Audience)
		case "issuer":
			err = oneArg(d, &m.Issuer)
		case "schema_shapes":
			err = flag(d, &m.SchemaShapes)
		default:
			return d.Errf("unrecognized identity_emulator option %q", d.Val())
		}
		if err != nil {
			return err
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
		var err error
		switch d.Val() {
		case "account":
			err = oneArg(d, &u.Account)
		case "id":
			err = oneArg(d, &u.ID)
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
			err = oneArg(d, &u.Email)
		case "roles":
			err = someArgs(d, &u.Roles)
		case "deactivated":
			err = flag(d, &u.Deactivated)
		default:
			return u, d.Errf("unrecognized user option %q", d.Val())
		}
		if err != nil {
			return u, err
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
			if err := someArgs(d, &c.RedirectURIs); err != nil {
				return c, err
			}
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

var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Service)(nil)
	_ caddyfile.Unmarshaler = (*IdentityEmulator)(nil)
)
