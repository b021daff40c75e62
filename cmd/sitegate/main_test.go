package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestBinary builds the sitegate binary and runs the subcommands the README names.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the whole binary")
	}
	bin := filepath.Join(t.TempDir(), "sitegate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !regexp.MustCompile(`^sitegate \S+.* \(Caddy v2\.11\.\d+\)\n$`).Match(out) {
		t.Errorf("sitegate version: %v: %q", err, out)
	}

	out, err = exec.Command(bin, "list-modules").CombinedOutput()
	modules := strings.Split(string(out), "\n")
	for _, want := range []string{"http.handlers.identity_emulator", "http.handlers.reverse_proxy"} {
		if err != nil || !slices.Contains(modules, want) {
			t.Errorf("sitegate list-modules lacks %s (%v)", want, err)
		}
	}

	out, err = exec.Command(bin, "adapt", "--config", "../../Caddyfile.example").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"handler":"identity_emulator"`) {
		t.Errorf("sitegate adapt Caddyfile.example: %v\n%s", err, out)
	}
}
