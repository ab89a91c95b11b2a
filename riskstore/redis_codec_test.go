package riskstore

import (
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDecodePrior(t *testing.T) {
	t.Parallel()
	p, err := decodePrior("1.335|0.275|dec|with|bars")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Prior{DecisionID: "dec|with|bars", StepRisk: 0.275, RiskTotal: 1.335}, p); diff != "" {
		t.Error(diff)
	}
	for _, rec := range []string{"", "1|2", "x|1|d", "1|x|d"} {
		if _, err := decodePrior(rec); err == nil {
			t.Errorf("decodePrior(%q) accepted", rec)
		}
	}
}

// FuzzDecodePrior: any stored prior decodes or fails without panicking, and
// one the script writes (total, then the payload Go sent) decodes to what
// was sent.
func FuzzDecodePrior(f *testing.F) {
	f.Add("1.335|0.275|dec", 1.335, 0.275, "dec")
	f.Add("", 0.0, -1e-300, "a|b")
	f.Add("1|2", math.MaxFloat64, 0.5, "\x00")
	f.Fuzz(func(t *testing.T, rec string, total, step float64, decision string) {
		_, _ = decodePrior(rec)
		if math.IsNaN(total) || math.IsNaN(step) {
			return
		}
		p, err := decodePrior(formatFloat(total) + "|" + formatFloat(step) + "|" + decision)
		if err != nil {
			t.Fatal(err)
		}
		if want := (Prior{DecisionID: decision, StepRisk: step, RiskTotal: total}); p != want {
			t.Fatalf("got %+v, want %+v", p, want)
		}
	})
}

// replyOf builds a script reply from its fields (facts joined by newlines,
// as the run hash keeps them).
func replyOf(outcome, limit, calls, writes, cost, risk, start, facts, prior, now, acalls, acost, astart string) []any {
	return []any{outcome, limit, calls, writes, cost, risk, start, facts, prior, now, acalls, acost, astart}
}

func TestDecodeReply(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)
	us := strconv.FormatInt(now.UnixMicro(), 10)
	got, err := decodeReply(runA, replyOf("dup", "0", "3", "1", "-5", "0.30000000000000004", us, "b\na", "0.3|0.1|d", us, "7", "9", us)) // stored in the order they came
	if err != nil {
		t.Fatal(err)
	}
	want := runReply{
		outcome: Duplicate,
		state: State{Run: runA, ToolCalls: 3, WriteOps: 1, CostMicros: -5, RiskTotal: 0.30000000000000004, StartedAt: now,
			Facts: []string{"a", "b"}, Agent: AgentUsage{ToolCalls: 7, CostMicros: 9, WindowStart: now}, Now: now, Version: 3},
		prior: &Prior{DecisionID: "d", StepRisk: 0.1, RiskTotal: 0.3},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(runReply{})); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	pred, err := decodeReply(runA, replyOf("?refused", "8", "0", "0", "0", "0", "", "", "", us, "0", "0", ""))
	if err != nil || pred.predicted != Refused || pred.limit != RunOwned || pred.state.Facts != nil {
		t.Errorf("prediction: %+v %v", pred, err)
	}
	if _, err := pred.result(); err == nil {
		t.Error("a prediction made a result")
	}

	bad := map[string][]any{
		"short":         {"ok"},
		"outcome":       replyOf("yes", "0", "0", "0", "0", "0", "", "", "", us, "0", "0", ""),
		"prediction":    replyOf("?", "0", "0", "0", "0", "0", "", "", "", us, "0", "0", ""),
		"limit code":    replyOf("refused", "9", "0", "0", "0", "0", "", "", "", us, "0", "0", ""),
		"counter":       replyOf("ok", "0", "1.5", "0", "0", "0", "", "", "", us, "0", "0", ""),
		"risk":          replyOf("ok", "0", "0", "0", "0", "x", "", "", "", us, "0", "0", ""),
		"start":         replyOf("ok", "0", "0", "0", "0", "0", "-1", "", "", us, "0", "0", ""),
		"empty fact":    replyOf("ok", "0", "0", "0", "0", "0", "", "b\n\na", "", us, "0", "0", ""),
		"repeated fact": replyOf("ok", "0", "0", "0", "0", "0", "", "a\na", "", us, "0", "0", ""),
		"prior":         replyOf("dup", "0", "0", "0", "0", "0", "", "", "x", us, "0", "0", ""),
		"no time":       replyOf("ok", "0", "0", "0", "0", "0", "", "", "", "", "0", "0", ""),
		"agent":         replyOf("ok", "0", "0", "0", "0", "0", "", "", "", us, "", "0", ""),
		"window":        replyOf("ok", "0", "0", "0", "0", "0", "", "", "", us, "0", "0", "1e6"),
	}
	for name, raw := range bad {
		if got, err := decodeReply(runA, raw); err == nil {
			t.Errorf("%s: decoded %+v", name, got)
		}
	}
}

// FuzzDecodeReply: any reply decodes or fails without panicking; one that
// decodes is self-consistent.
func FuzzDecodeReply(f *testing.F) {
	us := strconv.FormatInt(t0.UnixMicro(), 10)
	f.Add("ok", "0", "3", "1", "-5", "0.3", us, "a\nb", "", us, "7", "9", us)
	f.Add("?dup", "8", "0", "0", "0", "0", "", "", "0.3|0.1|d", us, "0", "0", "")
	f.Fuzz(func(t *testing.T, outcome, limit, calls, writes, cost, risk, start, facts, prior, now, acalls, acost, astart string) {
		got, err := decodeReply(runA, replyOf(outcome, limit, calls, writes, cost, risk, start, facts, prior, now, acalls, acost, astart))
		if err != nil {
			return
		}
		if got.state.Version != got.state.ToolCalls || got.state.Now.IsZero() || got.state.Run != runA {
			t.Fatalf("inconsistent state %+v", got.state)
		}
		if (got.outcome == 0) == (got.predicted == 0) && outcome != "" {
			t.Fatalf("outcome %q decoded to %v/%v", outcome, got.outcome, got.predicted)
		}
		for i := 1; i < len(got.state.Facts); i++ {
			if got.state.Facts[i] <= got.state.Facts[i-1] {
				t.Fatalf("facts not sorted: %q", got.state.Facts)
			}
		}
	})
}
