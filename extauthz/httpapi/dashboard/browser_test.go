package dashboard

import (
	"context"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/aisecops/aisecops-envoy/internal/browsertest"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

func TestMain(m *testing.M) {
	code := m.Run()
	browsertest.Shutdown()
	os.Exit(code)
}

// The payloads an agent could plant in what it controls: tool names (via a
// routes file it does not write, but test it anyway), run ids, reasons,
// provenance labels and argument values.
var xss = []string{
	`<img src=x onerror="window.__xss=1;document.title='pwned'">`,
	`<script>window.__xss=2</script>`,
	`"><svg onload="window.__xss=3">`,
	`javascript:window.__xss=4`,
}

// TestXSSInert drives the real pages in Chromium over data full of markup
// and checks that none of it ran or became an element, and that it is shown
// as the text it is.
func TestXSSInert(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	w.clock.now = time.Now() // the browser's own clock shows the pages' times
	now := w.clock.Now()
	var lines []string
	for i, p := range xss {
		lines = append(lines, record(now.Add(time.Duration(i-10)*time.Second), "crm-agent", "run-"+p, "tool-"+p, "deny", 0.5, 0.5*float64(i+1), 1.2, "reason-"+p))
	}
	w.write(t, lines...)
	ap := riskstore.Approval{ID: "apr_x", RunID: "run-" + xss[0], AgentID: "crm-agent", Tool: "tool-" + xss[1], Binding: xss[2],
		Reasons: []string{xss[3]}, Status: riskstore.ApprovalPending, CreatedAt: now,
		Detail: map[string]any{"arguments": map[string]any{"to": xss[0], "body": xss[1], xss[2]: "key-is-markup"}}}
	if err := w.store.CreateApproval(context.Background(), ap, time.Hour); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w.h)
	defer srv.Close()

	ctx := browsertest.New(t, 30*time.Second)
	signInBrowser(t, ctx, srv.URL, "approver-token")
	visits := []struct{ path, ready, name string }{
		{"/", "#tools tbody tr td a", "overview"},
		{"/runs?tool=" + url.QueryEscape("tool-"+xss[0]), "#runs tbody tr td a", "runs"},
		{"/run?" + url.Values{"agent": {"crm-agent"}, "id": {"run-" + xss[0]}}.Encode(), "#graph svg", "run"},
		{"/approvals", "#queue .approval table.args", "approvals"},
	}
	for _, v := range visits {
		if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+v.path), chromedp.WaitVisible(v.ready)); err != nil {
			t.Fatalf("%s: %v (page says %q)", v.path, err, pageStatus(ctx))
		}
		type state struct {
			XSS   any    `json:"xss"`
			Title string `json:"title"`
			Imgs  int    `json:"imgs"`
			Scr   int    `json:"scripts"`
			SVGOn int    `json:"svgon"`
			Text  string `json:"text"`
		}
		got, err := chromedp.Run(ctx, chromedp.Evaluate[state](`({xss: window.__xss === undefined ? null : window.__xss, title: document.title,
			imgs: document.querySelectorAll("main img").length, scripts: document.querySelectorAll("main script").length,
			svgon: document.querySelectorAll("[onload],[onerror]").length, text: document.querySelector("main").textContent})`))
		if err != nil {
			t.Fatal(err)
		}
		if got.XSS != nil || strings.Contains(got.Title, "pwned") || got.Imgs+got.Scr+got.SVGOn != 0 {
			t.Errorf("%s: markup ran or became elements: %+v", v.path, got)
		}
		if !strings.Contains(got.Text, `<img src=x onerror=`) {
			t.Errorf("%s: the payload is not shown as text", v.path)
		}
		if v.name == "approvals" {
			browsertest.Screenshot(t, ctx, "xss-inert-approvals")
		}
	}
	// The run link built from a run id never becomes a javascript: URL.
	hrefs, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("a")].map(a => a.href)`))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hrefs {
		if strings.HasPrefix(strings.ToLower(h), "javascript:") {
			t.Errorf("link %q", h)
		}
	}
}

// signInBrowser signs in through the form as a person does.
func signInBrowser(t *testing.T, ctx context.Context, base, credential string) {
	t.Helper()
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible("#credential"),
		chromedp.SendKeys("#credential", credential),
		chromedp.Click("#signin-submit"),
		chromedp.WaitVisible("#who"),
	); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || strings.Contains(loc, credential) {
		t.Fatalf("after sign-in at %q (%v): the credential must never be in a URL", loc, err)
	}
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie`))
	if err != nil || strings.Contains(stored, credential) || strings.Contains(stored, SessionCookie) {
		t.Fatalf("script can read %q (%v): no credential in storage, session cookie HttpOnly", stored, err)
	}
}

// pageStatus is the page's status line, for failure messages.
func pageStatus(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("status") || {}).textContent || document.body.textContent.slice(0, 300)`))
	return s
}
