package caddymodule

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// redirectOrigins are the allowed origins of the safeRedirect tests.
var redirectOrigins = map[string]bool{"https://app.example": true, "http://localhost:8080": true}

// redirectCases are the targets safeRedirect must accept (want is what it returns) or refuse
// (want is ""), each with the reason. Most refused ones are classic open-redirect bypasses, from
// OWASP's cheat sheet, PortSwigger's URL validation bypass list and oauth2-proxy's CVEs
// (CVE-2020-5233, CVE-2020-11053, CVE-2020-4037, CVE-2021-21291) and its openredirects.txt.
var redirectCases = []struct {
	rd, want, why string
}{
	// Accepted: local paths, as given.
	{"", "/", "no target: the site's root"},
	{"/", "/", "the root"},
	{"/orders?id=1#x", "/orders?id=1#x", "path, query and fragment"},
	{"/a/b", "/a/b", "a nested path"},
	{"/./a", "/./a", "a dot segment stays on the site"},
	{"/../a", "/../a", "'..' above the root stays at the root"},
	{"/a/./b/../c", "/a/./b/../c", "dot segments inside the path"},
	{"/caf%C3%A9", "/caf%C3%A9", "percent-encoded UTF-8 in a path"},
	{"/my%20orders", "/my%20orders", "an encoded space in a path"},
	{"/a/%2F%2Fevil.example", "/a/%2F%2Fevil.example", "encoded slashes after the first segment: a path, decoded or not"},
	{"/search?q=%2F%2Fx", "/search?q=%2F%2Fx", "encoded slashes in the query"},
	{"/a?next=//evil.example", "/a?next=//evil.example", "// in the query is no authority"},
	{"/a#//evil.example", "/a#//evil.example", "// in the fragment is no authority"},
	{"/<>//evil.example", "/<>//evil.example", "browsers percent-encode <> in the path: still a path on the site"},
	{"/100%25", "/100%25", "an encoded '%'; its decoding is no longer valid percent-encoding, which is fine"},
	{"/" + strings.Repeat("a", maxRedirectLen-1), "/" + strings.Repeat("a", maxRedirectLen-1), "exactly 2048 bytes"},

	// Accepted: absolute URLs on an allowed origin, as given.
	{"https://app.example/x", "https://app.example/x", "an allowed origin"},
	{"https://app.example", "https://app.example", "an allowed origin, no path"},
	{"https://app.example?x=1", "https://app.example?x=1", "an allowed origin, a query and no path"},
	{"https://app.example#@evil.example", "https://app.example#@evil.example", "'@' in the fragment: the host is app.example"},
	{"HTTPS://APP.Example/X", "HTTPS://APP.Example/X", "scheme and host are case-insensitive"},
	{"http://localhost:8080/x", "http://localhost:8080/x", "an allowed origin with a port"},

	// Refused: protocol-relative and backslash tricks.
	{"//evil.example", "", "protocol-relative: another host"},
	{"//app.example", "", "protocol-relative even for an allowed host: a scheme is required"},
	{"///evil.example", "", "browsers skip the extra slashes: another host"},
	{"////evil.example/%2e%2e", "", "many slashes"},
	{"/\\evil.example", "", "browsers read '\\' as '/': //evil.example"},
	{"\\\\evil", "", "browsers read '\\\\' as //"},
	{"\\/evil", "", "backslash then slash"},
	{"/./\\evil.example", "", "a dot segment then a backslash (oauth2-proxy CVE-2021-21291 family)"},
	{"/\\/evil.example/", "", "mixed slashes"},

	// Refused: characters browsers strip or reinterpret.
	{"/\t/evil.example", "", "browsers strip tabs: //evil.example (CVE-2020-11053)"},
	{"/\n/evil.example", "", "browsers strip LF"},
	{"/\r/evil.example", "", "browsers strip CR"},
	{"/\v/evil.example", "", "a vertical tab"},
	{"/\x00/evil.example", "", "NUL"},
	{"/x\x7f", "", "DEL"},
	{" /orders", "", "leading whitespace, stripped by browsers"},
	{"/orders ", "", "trailing whitespace"},
	{"\t/orders", "", "a leading tab"},
	{"/orders\n", "", "a trailing LF"},
	{"/ /evil.example", "", "a raw space (oauth2-proxy refuses '/ /')"},
	{"\x01javascript:alert(1)", "", "a leading C0 control, stripped by browsers"},

	// Refused: percent-encoded versions of the above.
	{"/%09/evil.example", "", "an encoded tab: refused, decoded or not"},
	{"/%0d%0aSet-Cookie:x=y", "", "encoded CR LF (header injection if decoded)"},
	{"/%2F%2Fevil.example", "", "decodes to ///evil.example"},
	{"/%2f/evil.example", "", "decodes to //evil.example"},
	{"/%5Cevil.example", "", "an encoded backslash"},
	{"/%255C%255Cevil", "", "a doubly encoded backslash"},
	{"/%252F%252Fevil.example", "", "doubly encoded slashes"},
	{"/%2F%5C%2F%67%6F%6F%67%6C%65%2E%63%6F%6D/", "", "encoded /\\/host (openredirects.txt)"},
	{"/%zz", "", "malformed percent-encoding"},
	{"%2F%2Fevil.example", "", "an encoded protocol-relative URL is no local path"},

	// Refused: dot segments that leave "//" at the start, as browsers resolve them.
	{"/.//evil.example", "", "resolves to //evil.example"},
	{"/..//evil.example", "", "resolves to //evil.example in browsers (not in Go's ResolveReference)"},
	{"/a/..//evil.example", "", "resolves to //evil.example"},
	{"/%2e%2e//evil.example", "", "an encoded '..' is '..' to browsers"},
	{"/a/.%2E//evil.example", "", "half-encoded '..'"},

	// Refused: schemes.
	{"https:evil.example", "", "no // after the scheme: browsers may take evil.example as the host"},
	{"http:/evil.example", "", "one slash after the scheme"},
	{"http:///evil.example", "", "three slashes: browsers take evil.example as the host"},
	{"https:\\\\evil.example", "", "backslashes after the scheme"},
	{"javascript:alert(1)", "", "javascript: runs script"},
	{"JaVaScRiPt:alert(1)", "", "schemes are case-insensitive"},
	{"javascript://app.example/%0aalert(1)", "", "javascript: with an allowed host in it"},
	{"java%0ascript:alert(1)", "", "javascript: with an encoded LF"},
	{"data:text/html;base64,PHNjcmlwdD4=", "", "data:"},
	{"vbscript:msgbox(1)", "", "vbscript:"},
	{"ftp://app.example/x", "", "a scheme other than http(s), allowed host"},
	{"http://app.example/x", "", "http is not the allowed https origin"},

	// Refused: hosts.
	{"https://evil.example", "", "an origin that is not allowed"},
	{"https://evil.example/https://app.example", "", "the allowed origin in the path"},
	{"https://evil.example?https://app.example", "", "the allowed origin in the query"},
	{"https://app.example@evil.example", "", "userinfo: the host is evil.example"},
	{"https://app.example:443@evil.example", "", "userinfo with a port-like suffix"},
	{"https://user@app.example/x", "", "userinfo, even on an allowed host"},
	{"https://evil.example\\@app.example", "", "browsers read '\\' as '/': the host is evil.example"},
	{"https://app.example.evil.example", "", "the allowed host as a prefix of another host"},
	{"https://evil-app.example", "", "the allowed host as a suffix"},
	{"https://app.example%2eevil.example", "", "an encoded dot in the host"},
	{"https://app%2eexample/x", "", "percent-encoding in the host, even when it decodes to an allowed host"},
	{"https://app.example%23@evil.example", "", "an encoded '#' before '@'"},
	{"https://app.example:8443/x", "", "another port"},
	{"https://app.example:/x", "", "an empty port: not the exact origin"},
	{"https://", "", "no host"},
	{"https:///app.example", "", "no host before the path"},
	{"https://[::ffff:127.0.0.1]/", "", "an IP literal not allowed"},

	// Refused: non-ASCII.
	{"／／evil.example", "", "fullwidth solidi"},
	{"/／evil.example", "", "a raw fullwidth solidus in a path (percent-encode it)"},
	{"https://evil.example／.app.example", "", "fullwidth solidus in the host: IDNA maps it to '/'"},
	{"https://аpp.example/x", "", "Cyrillic а: a homograph of the allowed host"},
	{"https://app。example/x", "", "ideographic full stop: IDNA maps it to '.'"},

	// Refused: not a path and not an absolute URL.
	{"orders", "", "a relative path without a leading slash"},
	{"evil.example", "", "a host without a scheme"},
	{"evil.example/x", "", "a host and path without a scheme"},
	{"@evil.example", "", "userinfo-looking text"},
	{"?next=1", "", "a query alone"},
	{"#x", "", "a fragment alone"},
	{"/" + strings.Repeat("a", maxRedirectLen), "", "longer than 2048 bytes"},
}

func TestSafeRedirect(t *testing.T) {
	for _, tc := range redirectCases {
		name := tc.why
		t.Run(name, func(t *testing.T) {
			got, err := safeRedirect(tc.rd, redirectOrigins)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("safeRedirect(%q) = %q, %v; want %q (%s)", tc.rd, got, err, tc.want, tc.why)
				}
				return
			}
			if err == nil {
				t.Fatalf("safeRedirect(%q) = %q, want an error (%s)", tc.rd, got, tc.why)
			}
			if got != "" {
				t.Errorf("safeRedirect(%q) returned %q with its error", tc.rd, got)
			}
			if !errors.Is(err, errUnsafeRedirect) {
				t.Errorf("error %v does not wrap errUnsafeRedirect", err)
			}
			msg := strings.TrimPrefix(err.Error(), errUnsafeRedirect.Error()+": ")
			if msg == "" || len(msg) > 100 || (len(tc.rd) > 4 && strings.Contains(msg, tc.rd)) ||
				strings.Contains(msg, "evil") || strings.Contains(msg, "app.example") {
				t.Errorf("error %q must say why, briefly, without the target", err)
			}
		})
	}
}

// TestSafeRedirectNoOrigins checks that absolute URLs are refused when no origin is allowed, and
// that local paths still work.
func TestSafeRedirectNoOrigins(t *testing.T) {
	for _, rd := range []string{"https://app.example/x", "http://localhost:8080/"} {
		if got, err := safeRedirect(rd, nil); err == nil {
			t.Errorf("safeRedirect(%q, nil) = %q, want an error", rd, got)
		}
	}
	if got, err := safeRedirect("/orders", nil); err != nil || got != "/orders" {
		t.Errorf("safeRedirect(/orders, nil) = %q, %v", got, err)
	}
}

// FuzzSafeRedirect checks that whatever safeRedirect accepts stays on the site or on an allowed
// origin, as a browser would resolve it: tab, CR and LF removed, then resolved against the
// gateway's URL.
func FuzzSafeRedirect(f *testing.F) {
	for _, tc := range redirectCases {
		f.Add(tc.rd)
	}
	base := &url.URL{Scheme: "https", Host: "gateway.example", Path: "/"}
	f.Fuzz(func(t *testing.T, rd string) {
		got, err := safeRedirect(rd, redirectOrigins)
		if err != nil {
			if got != "" || !errors.Is(err, errUnsafeRedirect) {
				t.Fatalf("safeRedirect(%q) = %q, %v", rd, got, err)
			}
			return
		}
		if want := rd; got != want && (rd != "" || got != "/") {
			t.Fatalf("safeRedirect(%q) = %q, want the target as given", rd, got)
		}
		// net/url does not read '\' as '/', as browsers do: none may pass.
		if strings.ContainsAny(got, "\\") {
			t.Fatalf("safeRedirect(%q) accepted a backslash", rd)
		}
		browser := strings.NewReplacer("\t", "", "\r", "", "\n", "").Replace(got)
		u, err := url.Parse(browser)
		if err != nil {
			t.Fatalf("safeRedirect(%q) accepted %q, which net/url cannot parse: %v", rd, got, err)
		}
		resolved := base.ResolveReference(u)
		origin := strings.ToLower(resolved.Scheme + "://" + resolved.Host)
		if resolved.User != nil || origin != "https://gateway.example" && !redirectOrigins[origin] {
			t.Fatalf("safeRedirect(%q) accepted %q, which leads to %s", rd, got, resolved.Redacted())
		}
		if origin == "https://gateway.example" {
			// The decoded path the site then sees, used again as a target, stays local too.
			if strings.HasPrefix(resolved.Path, "//") || strings.Contains(resolved.Path, "\\") {
				t.Fatalf("safeRedirect(%q) accepted %q, whose path %q reads as another host", rd, got, resolved.Path)
			}
		}
	})
}
