package caddymodule

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestStrip sends every spoofing variant of every owned header and checks none survives, while
// other headers do.
func TestStrip(t *testing.T) {
	owned := ownedHeaders{"X-Site-Context", "X-Fabric-Tenant-Id", "X-Fabric-Channel-Id", "X-User-Id"}
	h := http.Header{}
	for _, name := range owned {
		lower := strings.ToLower(name)
		for _, variant := range []string{name, lower, strings.ToUpper(name), strings.ReplaceAll(name, "-", "_"), strings.ReplaceAll(lower, "-", "_"), "x-" + strings.ReplaceAll(lower[2:], "-", "_")} {
			// Raw map writes keep the variants apart, as a server does for names it cannot
			// canonicalize (underscores).
			h[variant] = append(h[variant], "spoof-1", "spoof-2")
		}
	}
	h["X-Keep"] = []string{"yes"}
	h["X-Site-Contexts"] = []string{"not ours"}
	h["Connection"] = []string{"keep-alive, X-Site-Context", "x_user_id,Upgrade"}
	owned.strip(h)
	for name := range h {
		if owned.owns(name) {
			t.Errorf("%s survived the strip", name)
		}
	}
	if h.Get("X-Keep") != "yes" || h.Get("X-Site-Contexts") != "not ours" {
		t.Errorf("strip removed headers it does not own: %v", h)
	}
	if got := h["Connection"]; !slices.Equal(got, []string{"keep-alive, Upgrade"}) {
		t.Errorf("Connection %q, want the owned names removed", got)
	}

	h = http.Header{"Connection": {"x-site-context"}}
	owned.strip(h)
	if _, ok := h["Connection"]; ok {
		t.Errorf("a Connection header naming only owned headers should go: %v", h)
	}
}

func TestBearerToken(t *testing.T) {
	const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	for _, tc := range []struct {
		name   string
		values []string
		token  string
		err    *apiError
	}{
		{"bearer", []string{"Bearer " + jwt}, jwt, nil},
		{"scheme in any case", []string{"bEaReR " + jwt}, jwt, nil},
		{"padding", []string{"Bearer abc=="}, "abc==", nil},
		{"missing", nil, "", errMissingCredentials},
		{"empty", []string{""}, "", errMissingCredentials},
		{"two headers", []string{"Bearer " + jwt, "Bearer " + jwt}, "", errTwoCredentials},
		{"basic", []string{"Basic dXNlcjpwYXNz"}, "", errUnsupportedScheme},
		{"raw token without scheme", []string{jwt}, "", errUnsupportedScheme},
		{"no token", []string{"Bearer "}, "", errInvalidRequest},
		{"scheme only", []string{"Bearer"}, "", errInvalidRequest},
		{"two spaces", []string{"Bearer  " + jwt}, "", errInvalidRequest},
		{"tab", []string{"Bearer\t" + jwt}, "", errUnsupportedScheme},
		{"trailing space", []string{"Bearer " + jwt + " "}, "", errInvalidRequest},
		{"comma list", []string{"Bearer " + jwt + ", Bearer " + jwt}, "", errInvalidRequest},
		{"padding in the middle", []string{"Bearer ab=c"}, "", errInvalidRequest},
		{"only padding", []string{"Bearer ==="}, "", errInvalidRequest},
		{"quotes", []string{`Bearer "` + jwt + `"`}, "", errInvalidRequest},
		{"oversized", []string{"Bearer " + strings.Repeat("a", maxAuthorization)}, "", errInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.values {
				h.Add("Authorization", v)
			}
			token, err := bearerToken(h)
			if token != tc.token || err != tc.err {
				t.Fatalf("got %q, %v; want %q, %v", token, err, tc.token, tc.err)
			}
		})
	}
}

func TestHeaderValue(t *testing.T) {
	for in, want := range map[string]string{
		"pat":                      "pat",
		"pat\r\nX-Admin: true":     `pat\r\nX-Admin: true`,
		"tab\there":                `tab\there`,
		"Zoë":                      `Zo\u00eb`,
		"quote\" and \\ with \x00": `quote\" and \\ with \x00`,
	} {
		if got := headerValue(in); got != want {
			t.Errorf("headerValue(%q) = %q, want %q", in, got, want)
		}
	}
}
