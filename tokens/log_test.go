package tokens

import (
	"bytes"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// syncBuffer is a log sink safe for the background goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestNoSecretsInLogs drives every path that logs, at Debug, and checks that no token, part of a
// token, claim value or header value reaches the log or an error.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEmu(t)
	var out syncBuffer
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&out), zap.DebugLevel))
	rec := newRecorder()
	const apiKey = "secret-api-key-value"
	v := newValidator(t, emulatorConfig(e, func(c *Config) {
		c.Logger, c.Observer = logger, rec
		c.RefreshInterval = 10 * time.Millisecond
		c.Introspection = &Introspection{URL: e.URL + "/ums/v2/users/self", Header: http.Header{"X-Api-Key": {apiKey}}}
	}))
	local, v1 := e.clientToken(), e.v1Token()
	_, p, s := splitParts(local)
	tokens := []string{local, v1, tamper(local), "x" + v1}
	var errs []string
	check := func(tok string) {
		if _, err := validate(v, tok); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, tok := range tokens {
		check(tok)
	}
	e.fault(`{"endpoint":"ums.get_self","drop":true}`)
	e.fault(`{"endpoint":"oauth2.keys","status":503}`)
	check(v1 + "x")
	check(enc([]byte(`{"alg":"RS256","kid":"`+apiKey+`"}`)) + "." + p + "." + s)
	waitFor(t, "failed refreshes", func() bool { return rec.count("jwks.error") >= 2 })
	v.Close()

	logs := out.String()
	if !strings.Contains(logs, `"jwks refresh failed"`) || !strings.Contains(logs, `"url":"`+e.jwksURL()+`"`) {
		t.Fatalf("no refresh warning in the log:\n%s", logs)
	}
	if !strings.Contains(logs, `"introspection failed"`) {
		t.Fatalf("no introspection failure in the debug log:\n%s", logs)
	}
	secrets := []string{apiKey, "sysapp-secret", "pat-password", testAccount}
	for _, tok := range tokens {
		secrets = append(secrets, strings.Split(tok, ".")...)
	}
	for _, secret := range secrets {
		if len(secret) < 8 {
			continue
		}
		if strings.Contains(logs, secret) {
			t.Fatalf("the log holds a secret or part of a token:\n%s", logs)
		}
		for _, msg := range errs {
			if strings.Contains(msg, secret) {
				t.Fatalf("error %q holds a secret or part of a token", msg)
			}
		}
	}
}
