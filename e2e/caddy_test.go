// Package e2e runs real Caddy, in this test process, with sitegate's modules, and talks HTTP to it.
// It is the only package that starts Caddy: Caddy is one instance per process, so its tests run
// one after another and never in parallel.
package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/sitegate/sitegate/caddymodule"
)

// startCaddy adapts a Caddyfile and runs it until the test ends. The admin endpoint is off, so
// tests never collide with a Caddy running on the developer's machine, and Caddy's logs go to a
// file in the test's temporary directory, whose path it returns.
func startCaddy(t *testing.T, caddyfile string) (logFile string) {
	t.Helper()
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting the Caddyfile: %v", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatalf("adapted config: %v", err)
	}
	logFile = filepath.Join(t.TempDir(), "caddy.log")
	cfg["admin"] = map[string]any{"disabled": true, "config": map[string]any{"persist": false}}
	cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{
		"level":  "DEBUG",
		"writer": map[string]any{"output": "file", "filename": logFile},
	}}}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(raw, true); err != nil {
		t.Fatalf("loading config into Caddy: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	return logFile
}

// readLogs returns Caddy's log, less Caddy's own debug dump of the HTTP app's config ("adjusted
// config"), which holds any secret written into the config literally (the README says to use
// {env.*} placeholders). Everything else, and everything sitegate logs, must be free of secrets.
func readLogs(t *testing.T, logFile string) string {
	t.Helper()
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, `"msg":"adjusted config"`) {
			logs.WriteString(line + "\n")
		}
	}
	if logs.Len() < 1000 {
		t.Fatalf("Caddy wrote %d bytes of logs; a scan would prove nothing", logs.Len())
	}
	return logs.String()
}

// sleep pauses a polling loop.
func sleep() { time.Sleep(20 * time.Millisecond) }

// readFile returns a file of the repository, relative to its root.
func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var client = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// send makes a request and returns the status, header and body.
func send(t *testing.T, method, url string, header http.Header, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, string(b)
}

// decode unmarshals a JSON body into v.
func decode(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("body is not the expected JSON: %v: %s", err, body)
	}
}
