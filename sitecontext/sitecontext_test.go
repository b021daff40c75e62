package sitecontext

import (
	"errors"
	"testing"
	"time"
)

const (
	acctA = "5f689caa4216e7000750d1ef"
	acctB = "614bacaa4a74a70009d69d33"
)

var (
	v1Claims    = map[string]any{"id": "u1", "accountid": acctA}
	oauthClaims = map[string]any{"sub": "pat", "accounts": `{"` + acctA + `":{"id":"` + acctA + `"},"` + acctB + `":{"id":"` + acctB + `"}}`}
	oneAccount  = map[string]any{"sub": "pat", "accounts": `{"` + acctB + `":{"roles":[]}}`}
	noAccount   = map[string]any{"sub": "sysapp"}
	fixedNow    = func() time.Time { return time.Date(2026, 11, 23, 12, 0, 0, 5e6, time.UTC) }
)

func TestBuild(t *testing.T) {
	full := Config{Channel: 12, Stage: "production", Date: true, Now: fixedNow}
	for _, tc := range []struct {
		name   string
		cfg    Config
		claims map[string]any
		client []string
		want   string
		err    error
	}{
		{"v1 accountid", full, v1Claims, nil, `{"account":"` + acctA + `","channel":12,"stage":"production","date":"2026-11-23T12:00:00.005Z"}`, nil},
		{"oauth2 accounts, one", Config{}, oneAccount, nil, `{"account":"` + acctB + `"}`, nil},
		{"oauth2 accounts, several, client chooses", Config{}, oauthClaims, []string{`{"account":"` + acctB + `"}`}, `{"account":"` + acctB + `"}`, nil},
		{"oauth2 accounts, several, no choice", Config{}, oauthClaims, nil, "", ErrInvalid},
		{"configured claim", Config{AccountClaim: "tenant"}, map[string]any{"tenant": acctB, "accountid": acctA}, nil, `{"account":"` + acctB + `"}`, nil},
		{"literal for an identity without account", Config{Account: acctA}, noAccount, nil, `{"account":"` + acctA + `"}`, nil},
		{"literal pins the gateway", Config{Account: acctB}, v1Claims, nil, "", ErrAccountMismatch},
		{"literal among several", Config{Account: acctB}, oauthClaims, nil, `{"account":"` + acctB + `"}`, nil},
		{"no account anywhere", Config{Channel: 12}, noAccount, nil, "", nil},
		{"client account of another tenant", full, v1Claims, []string{`{"account":"` + acctB + `"}`}, "", ErrAccountMismatch},
		{"client account without identity account", Config{}, noAccount, []string{`{"account":"` + acctB + `"}`}, "", ErrAccountMismatch},
		{"client fields not allowed are replaced", full, v1Claims, []string{`{"account":"` + acctA + `","channel":13,"stage":"dev","date":"2020-01-01","site":"x"}`},
			`{"account":"` + acctA + `","channel":12,"stage":"production","date":"2026-11-23T12:00:00.005Z"}`, nil},
		{"allowed client fields are kept", Config{Channel: 12, Stage: "production", Date: true, Now: fixedNow, AllowClient: []string{"channel", "date"}}, v1Claims,
			[]string{`{"channel":"13","stage":"dev","date":"2021-06-21"}`}, `{"account":"` + acctA + `","channel":13,"stage":"production","date":"2021-06-21"}`, nil},
		{"malformed", full, v1Claims, []string{`{"account":`}, "", ErrInvalid},
		{"not an object", full, v1Claims, []string{`["` + acctA + `"]`}, "", ErrInvalid},
		{"null", full, v1Claims, []string{`null`}, "", ErrInvalid},
		{"sent twice", full, v1Claims, []string{`{}`, `{}`}, "", ErrInvalid},
		{"bad channel", full, v1Claims, []string{`{"channel":"US"}`}, "", ErrInvalid},
		{"negative channel", full, v1Claims, []string{`{"channel":-1}`}, "", ErrInvalid},
		{"bad date", full, v1Claims, []string{`{"date":"yesterday"}`}, "", ErrInvalid},
		{"control characters in stage", full, v1Claims, []string{`{"stage":"a\r\nX-Evil: 1"}`}, "", ErrInvalid},
		{"account with CRLF", full, v1Claims, []string{`{"account":"` + acctA + `\r\n"}`}, "", ErrInvalid},
		{"oversized", full, v1Claims, []string{`{"site":"` + string(make([]byte, 5000)) + `"}`}, "", ErrInvalid},
		{"claims with CR/LF are not accounts", Config{}, map[string]any{"accountid": acctA + "\r\nX-Evil: 1"}, nil, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			res, err := b.Build(tc.claims, tc.client)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if res.Value != tc.want {
				t.Fatalf("value\n got %s\nwant %s", res.Value, tc.want)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	for name, cfg := range map[string]Config{
		"bad account":            {Account: "acct-1"},
		"negative channel":       {Channel: -1},
		"stage with newline":     {Stage: "prod\n"},
		"client chooses account": {AllowClient: []string{"account"}},
		"unknown field":          {AllowClient: []string{"site"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	bl, _ := New(Config{Channel: 12, Stage: "production", Date: true})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bl.Build(v1Claims, nil); err != nil {
			b.Fatal(err)
		}
	}
}
