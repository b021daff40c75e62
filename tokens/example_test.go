package tokens_test

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/sitegate/sitegate/tokens"
)

// Example shows the wiring a handler uses: New in Provision (no network I/O), Start once
// provisioned, Close in Cleanup, and the status each error maps to.
func Example() {
	v, err := tokens.New(tokens.Config{
		DiscoveryURL: "https://acme.login.fabric.inc/oauth2/default", // also the issuer
		Audiences:    []string{"api://default"},
		Introspection: &tokens.Introspection{
			URL:    "https://api.identity.fabric.zone/ums/v2/users/self",
			Header: http.Header{"X-Api-Key": {"…"}},
		},
	})
	if err != nil {
		return // a configuration error: fail Provision
	}
	v.Start()
	defer v.Close()

	status := func(r *http.Request) int {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || len(raw) > tokens.MaxTokenSize {
			return http.StatusUnauthorized
		}
		id, err := v.Validate(r.Context(), raw)
		switch {
		case errors.Is(err, tokens.ErrNotReady), errors.Is(err, tokens.ErrUnavailable):
			return http.StatusServiceUnavailable // IDENTITY_UNAVAILABLE, with Retry-After
		case errors.Is(err, tokens.ErrExpired):
			return http.StatusUnauthorized // TOKEN_EXPIRED; err.Error() is safe to show
		case err != nil:
			return http.StatusUnauthorized // INVALID_TOKEN
		}
		_ = id.Subject // {http.auth.user.id}
		return http.StatusOK
	}
	r, _ := http.NewRequestWithContext(context.Background(), "GET", "/", nil)
	_ = status(r)
}
