package dashboard

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// benchWorld is the dashboard over an audit log of n runs of the worked
// example's three steps, read into the index once.
func benchWorld(b *testing.B, n int) *world {
	b.Helper()
	w := newWorld(b, SessionOptions{})
	lines := make([]string, 0, 3*n)
	start := t0.Add(-23 * time.Hour)
	for i := range n {
		at := start.Add(time.Duration(i) * 8 * time.Second)
		run := fmt.Sprintf("run-%05d", i)
		lines = append(lines,
			record(at, "crm-agent", run, "db.read", "allow", 0.10, 0.10, 1),
			record(at.Add(time.Second), "crm-agent", run, "send_email", "allow", 0.96, 1.06, 1.2),
			record(at.Add(2*time.Second), "crm-agent", run, "db.write", "require_approval", 0.275, 1.335, 1, "approval_required"))
	}
	w.write(b, lines...)
	if err := w.index.Refresh(); err != nil {
		b.Fatal(err)
	}
	if got := w.index.Overview(24*time.Hour, "", t0, nil).Runs; got != n {
		b.Fatalf("indexed %d runs, want %d", got, n)
	}
	return w
}

func (w *world) get(b *testing.B, path string) {
	resp := w.do(req{path: path, bearer: "ops-token"})
	if resp.Code != http.StatusOK {
		b.Fatalf("GET %s: %d %s", path, resp.Code, resp.Body)
	}
}

// BenchmarkOverview: GET /v1/overview over 10,000 recorded runs (30,000
// Checks), whole handler: authentication, the index scan, JSON.
func BenchmarkOverview(b *testing.B) {
	w := benchWorld(b, 10_000)
	for _, win := range []string{"24h", "30d"} {
		b.Run(win, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w.get(b, "/v1/overview?window="+win)
			}
		})
	}
}

// BenchmarkRunPage: what the server does for one run page among 10,000
// runs: the page itself, the agent's thresholds, the approvals, and the
// runs search by tool that leads to it. The timeline and graph the page
// also loads are another package's endpoints (DESIGN §7) and are not
// measured here.
func BenchmarkRunPage(b *testing.B) {
	w := benchWorld(b, 10_000)
	page := "/run?" + url.Values{"agent": {"crm-agent"}, "id": {"run-05000"}}.Encode()
	b.Run("page+thresholds+approvals", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.get(b, page)
			w.get(b, "/v1/overview/agents/crm-agent")
			w.get(b, "/v1/approvals")
		}
	})
	b.Run("runs-search-by-tool", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.get(b, "/v1/overview/runs?tool=send_email&limit=100")
		}
	})
}
