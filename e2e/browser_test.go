package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// browserTimeout bounds everything one test does with its browser, start included.
const browserTimeout = 60 * time.Second

// browserFlags are the Chromium flags of the tests, on top of chromedp's defaults (headless,
// no first run, no default-browser check, and Puppeteer's quiet set). Their point is a browser
// that reaches nothing but the test's own servers on 127.0.0.1: the tests run where only
// loopback traffic is wanted.
var browserFlags = []chromedp.ExecAllocatorOption{
	chromedp.Headless,
	// CI and developer machines run the tests as root in containers, where Chromium's sandbox
	// cannot start. The pages are the tests' own.
	chromedp.NoSandbox,
	// No background requests to Google services: component, extension and safe-browsing
	// updates, variations, translate, UMA upload, sync, default apps, first-run pages, crash
	// reports, hyperlink-auditing pings, Domain Reliability uploads.
	chromedp.Flag("disable-background-networking", true),
	chromedp.Flag("disable-component-update", true),
	chromedp.Flag("disable-default-apps", true),
	chromedp.Flag("disable-sync", true),
	chromedp.Flag("no-first-run", true),
	chromedp.Flag("metrics-recording-only", true),
	chromedp.Flag("disable-breakpad", true),
	chromedp.Flag("disable-client-side-phishing-detection", true),
	chromedp.Flag("disable-component-extensions-with-background-pages", true),
	chromedp.Flag("disable-domain-reliability", true),
	chromedp.Flag("no-pings", true),
	chromedp.Flag("safebrowsing-disable-auto-update", true),
	chromedp.Flag("disable-search-engine-choice-screen", true),
	// Features that fetch from Google on their own (replaces chromedp's default list, whose
	// Translate it keeps): optimization guide hints and models, Cast discovery (which also
	// multicasts on the LAN), autofill server queries, the Certificate Transparency log list,
	// the new-tab feed.
	chromedp.Flag("disable-features", strings.Join([]string{
		"Translate", "OptimizationHints", "OptimizationGuideModelDownloading", "MediaRouter",
		"DialMediaRouteProvider", "AutofillServerCommunication", "CertificateTransparencyComponentUpdater",
		"InterestFeedContentSuggestions",
	}, ",")),
	// The backstop: no host name resolves but localhost (to 127.0.0.1, where the tests' servers
	// listen), so whatever the flags above miss fails before it leaves the machine.
	chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
}

// browser starts a headless Chromium for the test and returns the context to drive it with
// chromedp. chromedp talks to it through a pipe, so the browser opens no debugging port. The
// browser, its user data directory (under t.TempDir()) and everything it does end with the
// test, and after browserTimeout at the latest.
//
// Without chromium on PATH the test is skipped, except in CI (CI set), where that fails:
// .ci/run installs Debian's chromium package.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("chromium is not on PATH: install Debian's chromium package to run the browser tests (in CI they fail without it)")
		}
		t.Fatalf("CI is set and chromium is not on PATH (.ci/run installs Debian's chromium package): %v", err)
	}
	dataDir := t.TempDir() // before the Cleanup below, so removed after the browser is gone
	out := &lockedBuffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], browserFlags...)
	opts = append(opts, chromedp.ExecPath(path), chromedp.UserDataDir(dataDir), chromedp.CombinedOutput(out))

	deadline, cancelDeadline := context.WithTimeout(context.Background(), browserTimeout)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(deadline, opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancelCtx()   // closes the tab and the browser, and waits for the browser to exit
		cancelAlloc() // waits until the allocator has freed everything
		cancelDeadline()
		if t.Failed() {
			t.Logf("chromium's output (less its complaints about the missing D-Bus):\n%s", out.quiet())
		}
	})
	// Start the browser now, so that a browser that cannot start fails here, clearly.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium (%s): %v", path, err)
	}
	return ctx
}

// lockedBuffer collects the browser's output, which a goroutine of chromedp writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// quiet returns the output less the lines about D-Bus, which containers do not run and which
// Chromium complains about at length.
func (b *lockedBuffer) quiet() string {
	var keep []string
	for _, line := range strings.Split(b.String(), "\n") {
		if !strings.Contains(line, ":ERROR:dbus/") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// signInOnEmulatorForm signs in on the identity emulator's hosted login page (the page of
// /oauth2/{server}/v1/authorize), which the browser must show or be about to show: it types
// the username and password as a person would and clicks "Sign in". The username field is
// cleared first, since the page shown again after a failed attempt keeps the username. It does
// not wait for what follows: the caller waits for the page it expects.
func signInOnEmulatorForm(username, password string) chromedp.Action[chromedp.Void] {
	const (
		user = `form input[name="username"]`
		pass = `form input[name="password"][type="password"]`
	)
	// chromedp.SetValue(sel, "") does not clear (it fails with "could not set value"), and
	// chromedp.Clear only resets the value attribute, which a field typed into ignores.
	clearUser := chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		v, err := chromedp.Evaluate[string](`(() => { const f = document.querySelector('`+user+`'); f.value = ""; return f.value })()`)(ctx, t)
		if err == nil && v != "" {
			err = fmt.Errorf("the username field still holds %q", v)
		}
		return err
	})
	return chromedp.Steps(
		chromedp.WaitVisible(chromedp.CSS(user)),
		clearUser,
		chromedp.SendKeys(chromedp.CSS(user), username),
		chromedp.SendKeys(chromedp.CSS(pass), password),
		chromedp.Click(chromedp.CSS(`form button[type="submit"]`)),
	)
}

// pkce returns a new PKCE code verifier and its S256 challenge (RFC 7636).
func pkce(t *testing.T) (verifier, challenge string) {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// landing is a redirect URI: a server on 127.0.0.1 that records the query of every request to
// /callback and answers with a page the browser can be seen to reach.
type landing struct {
	mu      sync.Mutex
	queries []url.Values
	url     string // of /callback
}

func newLanding(t *testing.T) *landing {
	t.Helper()
	l := &landing{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/callback" {
			http.NotFound(w, r)
			return
		}
		l.mu.Lock()
		l.queries = append(l.queries, r.URL.Query())
		l.mu.Unlock()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><title>landed</title><p id="landed">signed in</p>`)
	}))
	t.Cleanup(srv.Close)
	l.url = srv.URL + "/callback"
	return l
}

func (l *landing) received() []url.Values {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]url.Values(nil), l.queries...)
}

// TestBrowserEmulatorLogin proves the browser harness on the identity emulator alone: a real
// browser goes through the authorization code flow with PKCE of a public client on the hosted
// login page (a wrong password first, then the right one) and lands on the redirect URI with a
// code and the state it was sent with; the code then exchanges for tokens with the verifier.
func TestBrowserEmulatorLogin(t *testing.T) {
	start := time.Now()
	ctx := browser(t)
	cb := newLanding(t)
	idPort := freePort(t)
	identity := fmt.Sprintf("http://127.0.0.1:%d", idPort)
	startCaddy(t, fmt.Sprintf(`
http://:%[1]d {
	bind 127.0.0.1
	identity_emulator {
		issuer http://127.0.0.1:%[1]d
		user demo demo-password account %[2]s
		client browser-app {
			redirect_uri %[3]s
		}
	}
}`, idPort, demoAccount, cb.url))

	verifier, challenge := pkce(t)
	state := "st-" + rand.Text()
	authorize := identity + "/oauth2/default/v1/authorize?" + url.Values{
		"client_id":             {"browser-app"},
		"response_type":         {"code"},
		"scope":                 {"openid offline_access"},
		"redirect_uri":          {cb.url},
		"state":                 {state},
		"code_challenge_method": {"S256"},
		"code_challenge":        {challenge},
	}.Encode()

	if err := chromedp.Do(ctx,
		chromedp.Navigate(authorize),
		signInOnEmulatorForm("demo", "not-the-password"),
		chromedp.WaitVisible(chromedp.CSS(`p[role="alert"]`)),
	); err != nil {
		t.Fatalf("signing in with a wrong password: %v", err)
	}
	alert, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`p[role="alert"]`)))
	if err != nil || !strings.Contains(alert, "Sign-in failed") {
		t.Fatalf("after a wrong password the page says %q (%v), want a sign-in failure", alert, err)
	}
	if n := len(cb.received()); n != 0 {
		t.Fatalf("a wrong password reached the redirect URI (%d requests)", n)
	}

	if err := chromedp.Do(ctx,
		signInOnEmulatorForm("demo", "demo-password"),
		chromedp.WaitVisible(chromedp.ID("landed")),
	); err != nil {
		t.Fatalf("signing in: %v", err)
	}
	location, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	got := cb.received()
	if len(got) != 1 {
		t.Fatalf("the redirect URI got %d requests, want 1", len(got))
	}
	code := got[0].Get("code")
	if code == "" || got[0].Get("state") != state || got[0].Get("error") != "" {
		t.Fatalf("the redirect URI got %v, want a code and state %q", got[0], state)
	}
	if !strings.HasPrefix(location, cb.url+"?") || !strings.Contains(location, "state="+url.QueryEscape(state)) {
		t.Errorf("the browser is at %q, want the redirect URI with the state", location)
	}

	// The code is good: it exchanges for tokens with the verifier, once.
	exchange := url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {cb.url},
		"client_id": {"browser-app"}, "code_verifier": {verifier},
	}.Encode()
	form := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	status, _, body := send(t, "POST", identity+"/oauth2/default/v1/token", form, exchange)
	var tok struct {
		AccessToken  string `json:"access_token"`
		IDToken      string `json:"id_token"`
		RefreshToken string `json:"refresh_token"`
	}
	decode(t, body, &tok)
	if status != http.StatusOK || tok.AccessToken == "" || tok.IDToken == "" || tok.RefreshToken == "" {
		t.Fatalf("exchanging the code: %d %s", status, body)
	}
	if status, _, body := send(t, "POST", identity+"/oauth2/default/v1/token", form, exchange); status != http.StatusBadRequest {
		t.Errorf("exchanging the code again: %d %s, want 400", status, body)
	}
	t.Logf("browser sign-in through the emulator took %v", time.Since(start).Round(time.Millisecond))
}

// browserSignIn is the demo's browser sign-in, as a person does it: open a page of the
// gateway's http://localhost:8080 site without a session, be sent to the emulator's sign-in page
// through sitegate, sign in, and land on the page first asked for, served by the demo upstream
// with the session's bearer token and identity headers. It returns the session cookie's value,
// for the secret scans.
func browserSignIn(t *testing.T) (sessionCookie string) {
	ctx := browser(t)
	const page = "http://localhost:8080/orders?from=browser"
	if err := chromedp.Do(ctx,
		chromedp.Navigate(page),
		signInOnEmulatorForm("demo", "demo-password"),
		chromedp.WaitReady(chromedp.CSS("body")),
	); err != nil {
		t.Fatalf("signing in through the gateway: %v", err)
	}
	// Wait for the upstream's echo: the sign-in ends with redirects back to the page.
	var echo string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasPrefix(echo, "GET /orders") && time.Now().Before(deadline) {
		echo, _ = chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		sleep()
	}
	location, _ := chromedp.Run(ctx, chromedp.Location())
	if location != page {
		t.Errorf("the browser ended at %q, want %q", location, page)
	}
	for _, want := range []string{"GET /orders?from=browser\n", "\nHost: localhost:8080\n", "\nAuthorization: Bearer eyJ",
		"\nX-Site-Context: " + demoSite + "\n", "\nX-User-Id: "} {
		if !strings.Contains(echo, want) {
			t.Errorf("the page the browser landed on lacks %q:\n%s", want, echo)
		}
	}
	if strings.Contains(echo, "__Host-sitegate") {
		t.Errorf("sitegate's cookies reached the upstream:\n%s", echo)
	}

	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{page}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cookies.Cookies {
		switch c.Name {
		case "__Host-sitegate":
			sessionCookie = c.Value
			if !c.HTTPOnly || !c.Secure || c.SameSite != network.CookieSameSiteLax || c.Path != "/" || c.Domain != "localhost" {
				t.Errorf("the session cookie's attributes: %+v", c)
			}
		case "__Host-sitegate-login":
			t.Errorf("the sign-in's state cookie outlived the sign-in: %+v", c)
		}
	}
	if sessionCookie == "" {
		t.Fatalf("no session cookie in the browser: %+v", cookies.Cookies)
	}
	// Scripts cannot read it.
	if js, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.cookie")); strings.Contains(js, "sitegate") {
		t.Errorf("page scripts can read sitegate's cookie: %q", js)
	}
	return sessionCookie
}
