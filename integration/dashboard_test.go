package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aisecops/aisecops-envoy/internal/browsertest"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

func TestMain(m *testing.M) {
	code := m.Run()
	browsertest.Shutdown()
	os.Exit(code)
}

// crmAgent is the seed's worked example agent (section 8): approval at 1.2,
// so its third step (db.write after a read and an external send) is held.
const crmAgent = `
  - id: crm-agent
    allowed_tools: [db.read, db.write, send_email]
    budgets: {max_write_operations: 10}
    thresholds: {approval: 1.2, halt: 2.0}
`

// dashWorld is `aisecops all` on the bundled routes plus crm-agent, and an
// agent that sends Checks over gRPC as Envoy would.
type dashWorld struct {
	bin, home, http string
	env             []string
	client          envoy_service_auth_v3.AuthorizationClient
	file            *config.File
	n               int
}

func startDashWorld(t *testing.T) *dashWorld {
	t.Helper()
	w := &dashWorld{bin: buildBinary(t), home: t.TempDir()}
	routes := filepath.Join(t.TempDir(), "routes.yaml")
	raw := append(config.Example(), []byte(crmAgent)...)
	if err := os.WriteFile(routes, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	if w.file, err = config.Load(routes); err != nil {
		t.Fatal(err)
	}
	a := freeAddrs(t, 3)
	w.http = "http://" + a[1]
	w.env = append(os.Environ(), "AISECOPS_HOME="+w.home, "AISECOPS_AUTHZ_ADDR="+a[0], "AISECOPS_HTTP_ADDR="+a[1], "AISECOPS_XDS_ADDR="+a[2])
	startProc(t, w.bin, w.env, "all", "--config", routes)
	waitReady(t, w.http+"/readyz")
	conn, err := grpc.NewClient(a[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	w.client = envoy_service_auth_v3.NewAuthorizationClient(conn)
	return w
}

// check sends one tool call as Envoy's CheckRequest (no context extensions:
// the routes file names the tool by host) with a fresh capability token.
func (w *dashWorld) check(t *testing.T, agent, tool, run, args, approval string) *envoy_service_auth_v3.CheckResponse {
	t.Helper()
	tok := exec.Command(w.bin, "token", "--agent", agent, "--tool", tool, "--run", run)
	tok.Env = w.env
	out, err := tok.Output()
	if err != nil {
		t.Fatalf("aisecops token: %v", err)
	}
	tl, ok := w.file.Tool(tool)
	if !ok {
		t.Fatalf("no tool %s", tool)
	}
	w.n++
	h := map[string]string{":method": "POST", ":path": "/call", ":authority": tl.Match.Host, "content-type": "application/json",
		"authorization": "Bearer " + strings.TrimSpace(string(out)), "x-aisecops-run-id": run}
	if approval != "" {
		h["x-aisecops-approval"] = approval
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := w.client.Check(ctx, &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
			Id: fmt.Sprintf("dash-%d-%d", time.Now().UnixNano(), w.n), Method: "POST", Path: "/call", Host: tl.Match.Host, Headers: h,
			RawBody: fmt.Appendf(nil, `{"tool":%q,"arguments":%s,"trace_id":"t-%s"}`, tool, args, run),
		}}}})
	if err != nil {
		t.Fatalf("Check %s: %v", tool, err)
	}
	return resp
}

// mounted reports whether the API serves method path (an endpoint another
// branch builds may not have landed: the mux then answers its plain 404).
func (w *dashWorld) mounted(t *testing.T, method, path, admin string) bool {
	req, _ := http.NewRequest(method, w.http+path, strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return !(resp.StatusCode == http.StatusNotFound && strings.HasPrefix(string(b), "404 page not found")) && resp.StatusCode != http.StatusMethodNotAllowed
}

var workedExample = []struct{ tool, args, decision string }{
	{"db.read", `{"table":"crm_contacts","limit":1}`, "allow"},
	{"send_email", `{"to":"bob@example.com","subject":"hello","body":"hi"}`, "allow"},
	{"db.write", `{"table":"crm_contacts","id":7,"status":"emailed"}`, "require_approval"},
}

// TestDashboardInBrowser drives the dashboard of the real binary in a real
// Chromium, with runs made by real gRPC Checks: sign in, the worked
// example's run, approving its held step and the agent's retry, a replay
// diff, the evidence export and the signed declaration.
func TestDashboardInBrowser(t *testing.T) {
	w := startDashWorld(t)
	admin := adminToken(t, w.home)
	bctx := browsertest.New(t, 3*time.Minute)
	downloads := t.TempDir()
	if err := browsertest.AllowDownloads(bctx, downloads); err != nil {
		t.Fatal(err)
	}

	// Traffic: the worked example, and a demo agent whose exec after a read is denied.
	const run = "run-worked-example"
	var approvalID string
	for i, s := range workedExample {
		resp := w.check(t, "crm-agent", s.tool, run, s.args, "")
		got := "allow"
		if d := resp.GetDeniedResponse(); d != nil {
			var body struct {
				Decision   string `json:"decision"`
				ApprovalID string `json:"approval_id"`
			}
			_ = json.Unmarshal([]byte(d.GetBody()), &body)
			got, approvalID = body.Decision, body.ApprovalID
		}
		if got != s.decision {
			t.Fatalf("worked example step %d (%s): %s, want %s", i+1, s.tool, got, s.decision)
		}
	}
	if approvalID == "" {
		t.Fatal("step 3 was held without an approval id")
	}
	w.check(t, "demo-agent", "db.read", "run-demo-1", `{"table":"customers","limit":5}`, "")
	if resp := w.check(t, "demo-agent", "shell.exec", "run-demo-1", `{"cmd":"cat /etc/passwd"}`, ""); resp.GetOkResponse() != nil {
		t.Fatal("exec after a sensitive read was allowed")
	}

	t.Run("sign in", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bctx, 40*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Navigate(w.http+"/"), chromedp.WaitVisible("#credential")); err != nil {
			t.Fatal(err)
		}
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		if !strings.HasSuffix(loc, "/signin") {
			t.Fatalf("anonymous / went to %s, want the sign-in page", loc)
		}
		if err := chromedp.Do(ctx, chromedp.SendKeys("#credential", admin)); err != nil {
			t.Fatal(err)
		}
		browsertest.Screenshot(t, ctx, "signin")
		if err := chromedp.Do(ctx, chromedp.Click("#signin-submit"), chromedp.WaitVisible("#kpi-runs")); err != nil {
			t.Fatal(err)
		}
		runs, _ := chromedp.Run(ctx, chromedp.Text("#kpi-runs .kpi-value"))
		if runs != "2" {
			t.Errorf("overview shows %q runs, want 2", runs)
		}
		stored, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + JSON.stringify(localStorage) + document.cookie`))
		if strings.Contains(stored, admin) || strings.Contains(stored, "aisecops_session") {
			t.Errorf("credential or session readable by script or in the URL: %q", stored)
		}
		browsertest.Screenshot(t, ctx, "overview")
	})

	t.Run("worked example run", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bctx, 40*time.Second)
		defer cancel()
		// Search by tool (the dashboard's own search), then open the run.
		if err := chromedp.Do(ctx, chromedp.Navigate(w.http+"/runs"), chromedp.WaitVisible("#q-tool"),
			chromedp.SendKeys("#q-tool", "send_email"), chromedp.Click("#search"),
			chromedp.WaitVisible(`#runs tbody a[href*="`+run+`"]`)); err != nil {
			t.Fatal(err)
		}
		if !w.mounted(t, "GET", "/v1/runs/"+run+"/timeline", admin) {
			t.Skip("GET /v1/runs/{id}/timeline is not on this branch yet (h-gov): the run page cannot be shown")
		}
		if err := chromedp.Do(ctx, chromedp.Click(`#runs tbody a[href*="`+run+`"]`), chromedp.WaitVisible("#step-3"), chromedp.WaitVisible("#graph svg")); err != nil {
			t.Fatal(err)
		}
		rows, _ := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#timeline tbody tr")].map(r => r.textContent)`))
		if len(rows) != 3 || !strings.Contains(rows[2], "db.write") || !strings.Contains(rows[2], "approval required") || !strings.Contains(rows[2], approvalID) {
			t.Errorf("timeline rows %q: want 3 steps, the third held for approval %s", rows, approvalID)
		}
		lines, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#risk-chart line.threshold").length`))
		if lines != 2 {
			t.Errorf("risk chart draws %d threshold lines, want approval and halt", lines)
		}
		browsertest.Screenshot(t, ctx, "run-worked-example")
	})

	t.Run("approve and retry", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bctx, 40*time.Second)
		defer cancel()
		card := `.approval[data-id="` + approvalID + `"]`
		if err := chromedp.Do(ctx, chromedp.Navigate(w.http+"/approvals"), chromedp.WaitVisible(card)); err != nil {
			t.Fatal(err)
		}
		text, _ := chromedp.Run(ctx, chromedp.Text(card))
		for _, want := range []string{"db.write", "crm-agent", run, "approval_required"} {
			if !strings.Contains(text, want) {
				t.Errorf("held call card lacks %q: %s", want, text)
			}
		}
		if err := chromedp.Do(ctx, chromedp.SendKeys(card+" .why", "known contact, expected update")); err != nil {
			t.Fatal(err)
		}
		browsertest.Screenshot(t, ctx, "approvals")
		if err := chromedp.Do(ctx, chromedp.Click(card+" button.approve"), chromedp.WaitNotPresent(card)); err != nil {
			t.Fatal(err)
		}
		status, _ := chromedp.Run(ctx, chromedp.Text("#status"))
		if !strings.Contains(status, "Approved "+approvalID) {
			t.Errorf("status %q", status)
		}
		resp := w.check(t, "crm-agent", "db.write", run, workedExample[2].args, approvalID)
		if resp.GetOkResponse() == nil {
			t.Fatalf("the agent's retry after approval was not allowed: %s", resp.GetDeniedResponse().GetBody())
		}
		if err := chromedp.Do(ctx, chromedp.WaitVisible(`#decided tbody tr td.mono`)); err != nil {
			t.Fatal(err)
		}
		decided, _ := chromedp.Run(ctx, chromedp.Text("#decided tbody"))
		if !strings.Contains(decided, approvalID) || !strings.Contains(decided, "admin") {
			t.Errorf("decided table %q lacks the approval and who approved", decided)
		}
	})

	t.Run("replay diff", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bctx, 40*time.Second)
		defer cancel()
		if !w.mounted(t, "POST", "/v1/replay/diff", admin) {
			t.Skip("POST /v1/replay/diff is not on this branch yet (main): the replay page cannot run")
		}
		const stricter = "package aisecops.authz\n\nimport rego.v1\n\ndeny_reasons contains {\"code\": \"not_permitted\", \"message\": \"no email this week\", \"control_id\": \"AIS-EXE-01\"} if {\n\tinput.route.tool == \"send_email\"\n}\n"
		if err := chromedp.Do(ctx, chromedp.Navigate(w.http+"/policy"), chromedp.WaitReady(`#replay-file option[value="authz.rego"]`),
			chromedp.SendKeys("#replay-new", "candidate.rego"), chromedp.Click("#replay-add"),
			chromedp.SetValue("#replay-rego", stricter), chromedp.Click("#replay-run"),
			chromedp.WaitVisible(`#replay-changes tbody tr td.mono`)); err != nil {
			t.Fatalf("%v (%s)", err, pageText(ctx, "#replay-summary"))
		}
		rows, _ := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#replay-changes tbody tr")].map(r => r.textContent)`))
		if len(rows) != 1 || !strings.Contains(rows[0], "send_email") || !strings.Contains(rows[0], "not_permitted") {
			t.Errorf("replay changes %q: want exactly the worked example's send_email, now denied not_permitted", rows)
		}
		summary, _ := chromedp.Run(ctx, chromedp.Text("#replay-summary"))
		if !strings.Contains(summary, "would change") {
			t.Errorf("replay summary %q", summary)
		}
		browsertest.Screenshot(t, ctx, "replay-diff")
	})

	t.Run("evidence and declaration", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bctx, 40*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Navigate(w.http+"/evidence"), chromedp.WaitVisible(`#controls tbody tr td.mono`)); err != nil {
			t.Fatal(err)
		}
		level, _ := chromedp.Run(ctx, chromedp.Text("#level"))
		if !strings.HasPrefix(level, "Level 3") {
			t.Errorf("maturity %q, want level 3 (verified chain, threat suite, gateway evidence)", level)
		}
		browsertest.Screenshot(t, ctx, "evidence")
		if err := chromedp.Do(ctx, chromedp.Click("#export-declaration")); err != nil {
			t.Fatal(err)
		}
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		path, err := browsertest.WaitFile(dctx, downloads)
		if err != nil {
			t.Fatal(err)
		}
		verifyDeclaration(t, path, filepath.Join(w.home, "declaration-signing-key.pub.pem"))
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if !w.mounted(t, "GET", "/v1/evidence", admin) {
			t.Skip("GET /v1/evidence is not on this branch yet (h-gov): the evidence export cannot be downloaded")
		}
		if err := chromedp.Do(ctx, chromedp.Click("#export-evidence")); err != nil {
			t.Fatal(err)
		}
		path, err = browsertest.WaitFile(dctx, downloads)
		if err != nil {
			t.Fatal(err)
		}
		verify := exec.Command(w.bin, "evidence", "verify", path)
		verify.Env = w.env
		if out, err := verify.CombinedOutput(); err != nil {
			t.Errorf("aisecops evidence verify of the exported file: %v\n%s", err, out)
		}
	})
}

func pageText(ctx context.Context, sel string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Text(sel))
	return s
}

// verifyDeclaration checks a downloaded declaration against the public key
// the service wrote in its home.
func verifyDeclaration(t *testing.T, path, pubPath string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s struct{ Payload, Signature, Alg string }
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("declaration file: %v", err)
	}
	pemBytes, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatal("public key is not PEM")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.StdEncoding.DecodeString(s.Payload)
	sig, _ := base64.StdEncoding.DecodeString(s.Signature)
	if !ed25519.Verify(k.(ed25519.PublicKey), payload, sig) {
		t.Fatal("the declaration does not verify under the service's public key")
	}
	var d struct {
		Level    int       `json:"maturity_level"`
		Coverage float64   `json:"control_coverage_pct"`
		Last     time.Time `json:"last_evaluation"`
		Gaps     []string  `json:"known_gaps"`
	}
	_ = json.Unmarshal(payload, &d)
	if d.Level != 3 || d.Coverage != 100 || d.Last.IsZero() || len(d.Gaps) == 0 {
		t.Errorf("declaration %+v: want level 3, 100%% coverage, a date, level 4's gaps", d)
	}
}
