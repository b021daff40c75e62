package caddymodule

import (
	"errors"
	"net/url"
	"strings"
)

// maxRedirectLen bounds the rd parameter of the login endpoint.
const maxRedirectLen = 2048

// errUnsafeRedirect is wrapped by every error of safeRedirect.
var errUnsafeRedirect = errors.New("unsafe redirect target")

// refuseRedirect is an error of safeRedirect: why a target was refused, never the target itself,
// so that the message is safe to log and to show.
func refuseRedirect(why string) error {
	return &redirectError{why}
}

type redirectError struct{ why string }

func (e *redirectError) Error() string { return errUnsafeRedirect.Error() + ": " + e.why }
func (e *redirectError) Unwrap() error { return errUnsafeRedirect }

// safeRedirect returns the target to redirect a browser to after sign-in: rd when it is a local
// path, or an absolute URL on one of origins ("scheme://host[:port]", lower-case, as the
// sessionGate.origins map holds them), else an error saying why. The error never holds rd. An
// empty rd gives "/".
//
// It is deliberately stricter than browsers, so that no difference between its parsing and a
// browser's (WHATWG URL) can turn a target it accepts into a redirect off the site:
//
//   - rd is printable ASCII only: no control character, space or DEL (browsers strip tab, CR and
//     LF anywhere and C0 controls and spaces at the ends, so "/\t/evil" is "//evil" to them), and
//     no raw non-ASCII (fullwidth solidus and other characters that IDNA maps to '/', '.', '@');
//     a path may carry UTF-8 percent-encoded;
//   - no backslash (browsers read '\' as '/' in http(s) URLs);
//   - the same holds of rd percent-decoded, repeatedly while that changes it, since a server
//     behind may decode the path and redirect again;
//   - a local path starts with exactly one '/', and neither it nor its decodings resolve, once
//     dot segments are removed as browsers do ("/a/..//evil" is "//evil"), to a path that
//     starts with "//";
//   - an absolute URL starts with "http://" or "https://" and the text up to the first '/', '?'
//     or '#' after that is exactly an allowed origin: no userinfo, no percent-encoding in the
//     host, same port. Protocol-relative URLs ("//host") are refused even for allowed hosts.
//
// A local path is returned as given: it stays relative.
func safeRedirect(rd string, origins map[string]bool) (string, error) {
	if rd == "" {
		return "/", nil
	}
	if len(rd) > maxRedirectLen {
		return "", refuseRedirect("longer than 2048 bytes")
	}
	if why := badChar(rd, true); why != "" {
		return "", refuseRedirect(why)
	}
	forms, why := decodings(rd)
	if why != "" {
		return "", refuseRedirect(why)
	}
	for _, d := range forms[1:] {
		if why := badChar(d, false); why != "" {
			return "", refuseRedirect("percent-decoded, " + why)
		}
	}
	if !strings.HasPrefix(rd, "/") {
		return absoluteRedirect(rd, origins)
	}
	if strings.HasPrefix(rd, "//") {
		return "", refuseRedirect("is a protocol-relative URL (an absolute URL needs a scheme)")
	}
	if _, err := url.Parse(rd); err != nil {
		return "", refuseRedirect("is not a valid URL path")
	}
	for i, d := range forms {
		if strings.HasPrefix(d, "//") || strings.HasPrefix(resolveDots(d), "//") {
			if i == 0 {
				return "", refuseRedirect("is a path that resolves to start with //")
			}
			return "", refuseRedirect("is a path that decodes to one starting with //")
		}
	}
	return rd, nil
}

// badChar describes the first character of s that no target may hold, or returns "": a control
// character or a backslash, and in the raw target (not its decodings, where "%20" and
// percent-encoded UTF-8 are fine) a space or a non-ASCII byte.
func badChar(s string, raw bool) string {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c == 0x7f:
			return "holds a control character"
		case c == '\\':
			return "holds a backslash"
		case raw && c == ' ':
			return "holds whitespace"
		}
	}
	if raw {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return "holds a non-ASCII character (percent-encode it)"
			}
		}
	}
	return ""
}

// decodings returns s and its successive percent-decodings, up to the first that no longer
// changes (a few rounds at most). Malformed percent-encoding is refused in s itself; in a
// decoding it ends the list (s held a literal, encoded '%').
func decodings(s string) ([]string, string) {
	forms := []string{s}
	for range 4 {
		d, err := url.PathUnescape(s)
		if err != nil {
			if len(forms) == 1 {
				return nil, "holds malformed percent-encoding"
			}
			return forms, ""
		}
		if d == s {
			return forms, ""
		}
		forms = append(forms, d)
		s = d
	}
	return nil, "is percent-encoded too many times"
}

// resolveDots returns the path of p (up to '?' or '#'), which starts with '/', with its dot
// segments removed the way browsers remove them (WHATWG URL path state): "." and ".." also
// spelled "%2e", and an empty segment kept where ".." removed the one before it, so that
// "/a/..//evil" gives "//evil" (Go's url.ResolveReference gives "/evil").
func resolveDots(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	var out []string
	for i, seg := range segs {
		last := i == len(segs)-1
		switch strings.ToLower(seg) {
		case "..", ".%2e", "%2e.", "%2e%2e":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		case ".", "%2e":
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/")
}

// absoluteRedirect checks a target that does not start with '/': it must be an absolute http(s)
// URL on an allowed origin.
func absoluteRedirect(rd string, origins map[string]bool) (string, error) {
	lower := strings.ToLower(rd)
	var rest string
	switch {
	case strings.HasPrefix(lower, "https://"):
		rest = rd[len("https://"):]
	case strings.HasPrefix(lower, "http://"):
		rest = rd[len("http://"):]
	case strings.HasPrefix(lower, "http:") || strings.HasPrefix(lower, "https:"):
		return "", refuseRedirect("is an http(s) URL without // after the scheme")
	case schemeLike(lower):
		return "", refuseRedirect("has a scheme other than http or https")
	default:
		return "", refuseRedirect("is neither a path starting with / nor an absolute http(s) URL")
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	if authority == "" {
		return "", refuseRedirect("is an absolute URL without a host")
	}
	if strings.ContainsAny(authority, "@%") {
		return "", refuseRedirect("is an absolute URL with userinfo or percent-encoding in its host")
	}
	origin := strings.ToLower(rd[:len(rd)-len(rest)] + authority)
	if !origins[origin] {
		return "", refuseRedirect("is an absolute URL on an origin that is not allowed")
	}
	// What net/url makes of it must agree with the text checked above.
	u, err := url.Parse(rd)
	if err != nil || u.Opaque != "" || u.User != nil || strings.ToLower(u.Scheme+"://"+u.Host) != origin {
		return "", refuseRedirect("is a malformed absolute URL")
	}
	return rd, nil
}

// schemeLike reports whether s starts with something a browser reads as a URL scheme: a letter,
// then letters, digits, '+', '-' or '.', then ':'.
func schemeLike(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		case i > 0 && c == ':':
			return true
		default:
			return false
		}
	}
	return false
}
