// Package sitecontext builds the x-site-context header that fabric's commerce APIs scope every
// request by: {"account": …, "channel": …, "stage": …, "date": …}, compact JSON on one line.
//
// The account comes from the authenticated identity (the v1 accountid claim, the OAuth2 accounts
// claim, or a configured claim), or from configuration. A client may send its own x-site-context:
// it is parsed strictly, its account must be one of the identity's, and only the fields the
// configuration lets the client choose are kept; everything else is sitegate's.
package sitecontext

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Header names sitegate owns.
const (
	Header          = "X-Site-Context"
	TenantHeader    = "X-Fabric-Tenant-Id"
	ChannelHeader   = "X-Fabric-Channel-Id"
	maxClientHeader = 4 << 10
	maxAccountLen   = 64
)

var (
	// ErrInvalid is a malformed client x-site-context (400 INVALID_SITE_CONTEXT).
	ErrInvalid = errors.New("invalid x-site-context")
	// ErrAccountMismatch is an account the identity does not belong to (403 ACCOUNT_MISMATCH).
	ErrAccountMismatch = errors.New("account does not match the identity")
)

// Fields a client may be allowed to choose.
var clientFields = []string{"channel", "stage", "date"}

// Config says how the header is built.
type Config struct {
	// Account is the merchant account when the identity names none. When set, it also pins the
	// gateway to that account: an identity of other accounts is refused.
	Account string
	// AccountClaim names the claim that holds the identity's accounts: a string, an array of
	// strings, an object keyed by account, or a string holding such an object. Default: the v1
	// accountid claim, then the OAuth2 accounts claim.
	AccountClaim string
	// Channel is the sales channel (12 is the US). Zero leaves it out.
	Channel int
	// Stage is the environment name, e.g. production. Empty leaves it out.
	Stage string
	// Date adds the current time as date.
	Date bool
	// AllowClient lists the fields (channel, stage, date) a client-sent x-site-context may set.
	AllowClient []string
	// Now is the clock for Date. Default: time.Now.
	Now func() time.Time
}

// Builder builds x-site-context values. It is safe for concurrent use.
type Builder struct {
	cfg   Config
	allow map[string]bool
	// tail is the encoded header after the account when the client chose nothing and there is
	// no date: the common case costs one concatenation.
	tail string
}

// New checks cfg and returns a Builder.
func New(cfg Config) (*Builder, error) {
	if cfg.Account != "" && !validAccount(cfg.Account) {
		return nil, fmt.Errorf("account %q must be 1 to %d letters and digits", cfg.Account, maxAccountLen)
	}
	if cfg.Channel < 0 {
		return nil, fmt.Errorf("channel must not be negative")
	}
	if !printable(cfg.Stage) {
		return nil, fmt.Errorf("stage must be printable ASCII of at most 64 characters")
	}
	allow := map[string]bool{}
	for _, f := range cfg.AllowClient {
		if !slices.Contains(clientFields, f) {
			return nil, fmt.Errorf("allow_client: %q is not one of %s (the account is always the identity's)", f, strings.Join(clientFields, ", "))
		}
		allow[f] = true
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := &Builder{cfg: cfg, allow: allow}
	full := b.fill(siteContext{Account: "-"}, clientContext{})
	b.tail = strings.TrimPrefix(encode(full), `{"account":"-"`)
	return b, nil
}

// Result is what Build produced.
type Result struct {
	// Value is the x-site-context header value; empty when no account is known.
	Value string
	// Account is the account chosen; Channel the channel, 0 when none.
	Account string
	Channel int
}

// siteContext is the header's content, in the order it is written.
type siteContext struct {
	Account string `json:"account"`
	Channel *int   `json:"channel,omitempty"`
	Stage   string `json:"stage,omitempty"`
	Date    string `json:"date,omitempty"`
}

// clientContext is a client-sent header after strict parsing.
type clientContext struct {
	account, stage, date string
	channel              *int
}

// Build returns the x-site-context for an identity's claims and the x-site-context values a
// client sent (nil or empty when none). Errors wrap ErrInvalid or ErrAccountMismatch with a reason
// that is safe to show the client.
func (b *Builder) Build(claims map[string]any, client []string) (Result, error) {
	var cc clientContext
	switch len(client) {
	case 0:
	case 1:
		var err error
		if cc, err = parseClient(client[0]); err != nil {
			return Result{}, err
		}
	default:
		return Result{}, fmt.Errorf("%w: the header was sent more than once", ErrInvalid)
	}
	account, err := b.account(Accounts(claims, b.cfg.AccountClaim), cc.account)
	if err != nil || account == "" {
		return Result{}, err
	}

	if len(client) == 0 && !b.cfg.Date {
		// Account ids are letters and digits: nothing to escape.
		return Result{Value: `{"account":"` + account + `"` + b.tail, Account: account, Channel: b.cfg.Channel}, nil
	}
	sc := b.fill(siteContext{Account: account}, cc)
	res := Result{Value: encode(sc), Account: account}
	if sc.Channel != nil {
		res.Channel = *sc.Channel
	}
	return res, nil
}

// fill completes sc from the configuration and the client's allowed choices.
func (b *Builder) fill(sc siteContext, cc clientContext) siteContext {
	sc.Stage = b.cfg.Stage
	if b.cfg.Channel != 0 {
		ch := b.cfg.Channel
		sc.Channel = &ch
	}
	if b.cfg.Date {
		sc.Date = b.cfg.Now().UTC().Format("2006-01-02T15:04:05.000Z")
	}
	if b.allow["channel"] && cc.channel != nil {
		sc.Channel = cc.channel
	}
	if b.allow["stage"] && cc.stage != "" {
		sc.Stage = cc.stage
	}
	if b.allow["date"] && cc.date != "" {
		sc.Date = cc.date
	}
	return sc
}

// account chooses the account: the client's choice among the identity's accounts, the configured
// one, or the identity's only one.
func (b *Builder) account(ids []string, client string) (string, error) {
	fixed := b.cfg.Account
	switch {
	case fixed != "" && len(ids) > 0 && !slices.Contains(ids, fixed):
		return "", fmt.Errorf("%w: the identity does not belong to this gateway's account", ErrAccountMismatch)
	case client != "" && len(ids) > 0 && !slices.Contains(ids, client):
		return "", fmt.Errorf("%w: the identity does not belong to account %s", ErrAccountMismatch, client)
	case client != "" && len(ids) == 0 && client != fixed:
		return "", fmt.Errorf("%w: the identity names no account and %s is not this gateway's", ErrAccountMismatch, client)
	case fixed != "" && client != "" && client != fixed:
		return "", fmt.Errorf("%w: this gateway serves another account", ErrAccountMismatch)
	case client != "":
		return client, nil
	case fixed != "":
		return fixed, nil
	case len(ids) == 1:
		return ids[0], nil
	case len(ids) > 1:
		return "", fmt.Errorf("%w: the identity belongs to several accounts; name one in x-site-context", ErrInvalid)
	}
	return "", nil
}

// Accounts returns the accounts an identity's claims name: claim when set, else the v1
// accountid claim, else the OAuth2 accounts claim. Values that are not valid account ids are
// ignored. The result is sorted.
func Accounts(claims map[string]any, claim string) []string {
	if claim != "" {
		return accountIDs(claims[claim])
	}
	if ids := accountIDs(claims["accountid"]); len(ids) > 0 {
		return ids
	}
	return accountIDs(claims["accounts"])
}

func accountIDs(v any) []string {
	var ids []string
	switch t := v.(type) {
	case string:
		// The OAuth2 accounts claim is a string holding a JSON object keyed by account.
		var obj map[string]json.RawMessage
		if strings.HasPrefix(strings.TrimSpace(t), "{") && json.Unmarshal([]byte(t), &obj) == nil {
			for k := range obj {
				ids = append(ids, k)
			}
		} else {
			ids = append(ids, t)
		}
	case []any:
		for _, e := range t {
			if s, ok := e.(string); ok {
				ids = append(ids, s)
			}
		}
	case map[string]any:
		for k := range t {
			ids = append(ids, k)
		}
	}
	ids = slices.DeleteFunc(ids, func(id string) bool { return !validAccount(id) })
	sort.Strings(ids)
	return ids
}

// parseClient parses a client-sent x-site-context strictly: a JSON object of at most 4 KiB whose
// known fields have the documented types. Unknown fields are ignored (they are never forwarded).
func parseClient(v string) (clientContext, error) {
	var cc clientContext
	if len(v) > maxClientHeader {
		return cc, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, maxClientHeader)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(v), &raw); err != nil || raw == nil {
		return cc, fmt.Errorf("%w: not a JSON object", ErrInvalid)
	}
	if a, ok := raw["account"]; ok {
		if json.Unmarshal(a, &cc.account) != nil || !validAccount(cc.account) {
			return cc, fmt.Errorf("%w: account must be a string of letters and digits", ErrInvalid)
		}
	}
	if c, ok := raw["channel"]; ok {
		n, err := channel(c)
		if err != nil {
			return cc, err
		}
		cc.channel = &n
	}
	if s, ok := raw["stage"]; ok {
		if json.Unmarshal(s, &cc.stage) != nil || !printable(cc.stage) {
			return cc, fmt.Errorf("%w: stage must be printable ASCII of at most 64 characters", ErrInvalid)
		}
	}
	if d, ok := raw["date"]; ok {
		if json.Unmarshal(d, &cc.date) != nil || !validDate(cc.date) {
			return cc, fmt.Errorf("%w: date must be an RFC 3339 timestamp or a date", ErrInvalid)
		}
	}
	return cc, nil
}

func channel(raw json.RawMessage) (int, error) {
	var n int
	if json.Unmarshal(raw, &n) == nil && n >= 0 {
		return n, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: channel must be a number or a numeric string", ErrInvalid)
}

func validDate(s string) bool {
	if _, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return true
	}
	_, err := time.Parse(time.DateOnly, s)
	return err == nil
}

func validAccount(id string) bool {
	if id == "" || len(id) > maxAccountLen {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// printable reports whether s is at most 64 characters of printable ASCII.
func printable(s string) bool {
	if len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// encode writes sc as compact JSON. Every field is generated or validated as printable ASCII, so
// the header is one clean line whatever a claim or a client held.
func encode(sc siteContext) string {
	b, _ := json.Marshal(sc) // a struct of strings and an int cannot fail to encode
	return string(b)
}
