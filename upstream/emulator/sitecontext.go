package emulator

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// siteContext is a validated x-site-context header.
type siteContext struct {
	Account string
	Channel int
	Stage   string
	Date    time.Time
}

// parseSiteContext validates an x-site-context header the way fabric Identity v1 does: a JSON
// object with a 24-character alphanumeric account; channel a number or a numeric string; date a
// full RFC 3339 timestamp or a date; unknown keys ignored.
func parseSiteContext(r *http.Request) (siteContext, error) {
	values := r.Header.Values("x-site-context")
	switch len(values) {
	case 0:
		return siteContext{}, badRequest("x-site-context header is required")
	case 1:
	default:
		return siteContext{}, badRequest("x-site-context header must be sent once")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(values[0]), &raw); err != nil || raw == nil {
		return siteContext{}, badRequest("x-site-context must be a JSON object")
	}
	var sc siteContext
	if err := json.Unmarshal(raw["account"], &sc.Account); err != nil || raw["account"] == nil {
		return siteContext{}, badRequest("x-site-context account is required and must be a string")
	}
	if !validAccount(sc.Account) {
		return siteContext{}, badRequest("x-site-context account must be a 24-character identifier")
	}
	if c, ok := raw["channel"]; ok {
		n, err := channelNumber(c)
		if err != nil {
			return siteContext{}, err
		}
		sc.Channel = n
	}
	if s, ok := raw["stage"]; ok {
		if err := json.Unmarshal(s, &sc.Stage); err != nil {
			return siteContext{}, badRequest("x-site-context stage must be a string")
		}
	}
	if d, ok := raw["date"]; ok {
		var text string
		if err := json.Unmarshal(d, &text); err != nil {
			return siteContext{}, badRequest("x-site-context date must be a string")
		}
		t, err := time.Parse(time.RFC3339Nano, text)
		if err != nil {
			t, err = time.Parse(time.DateOnly, text)
		}
		if err != nil {
			return siteContext{}, badRequest("x-site-context date must be an ISO 8601 timestamp or date")
		}
		sc.Date = t
	}
	return sc, nil
}

func channelNumber(raw json.RawMessage) (int, error) {
	var n int
	if err := json.Unmarshal(raw, &n); err == nil {
		return n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if n, err := strconv.Atoi(s); err == nil {
			return n, nil
		}
	}
	return 0, badRequest("x-site-context channel must be a number or a numeric string")
}

// validAccount reports whether id is a 24-character alphanumeric identifier.
func validAccount(id string) bool {
	if len(id) != 24 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
