package caddymodule

import (
	"net/http"
	"strings"
)

// ownedHeaders are the request headers sitegate owns. Clients cannot send them: every variant is
// removed before anything else happens.
type ownedHeaders []string

// owns reports whether name is an owned header, compared the way spoofing attempts vary it:
// ASCII case-insensitively, and with "_" equal to "-" (servers and CGI-style gateways often treat
// X_Site_Context as X-Site-Context). It allocates nothing: it runs for every request header.
func (o ownedHeaders) owns(name string) bool {
	for _, own := range o {
		if len(own) == len(name) && foldHeader(own, name) {
			return true
		}
	}
	return false
}

func foldHeader(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := fold(a[i]), fold(b[i])
		if x != y {
			return false
		}
	}
	return true
}

func fold(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	case c == '_':
		return '-'
	}
	return c
}

// strip removes every owned header from h, whatever its case, underscores or number of copies,
// and removes owned names from Connection: Caddy's proxy deletes the headers that Connection
// names, which would drop what sitegate injects.
func (o ownedHeaders) strip(h http.Header) {
	for name := range h {
		if o.owns(name) {
			delete(h, name)
		}
	}
	conn, ok := h["Connection"]
	if !ok {
		return
	}
	var kept []string
	for _, v := range conn {
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !o.owns(tok) {
				kept = append(kept, tok)
			}
		}
	}
	if len(kept) == 0 {
		delete(h, "Connection")
		return
	}
	h["Connection"] = []string{strings.Join(kept, ", ")}
}
