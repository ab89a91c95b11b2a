package riskstore

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func codecCases() map[string]StepSummary {
	return map[string]StepSummary{
		"typical":       {Tool: "send_email", Class: "external_send", Trust: "untrusted", Untrusted: true, Risk: 0.275, At: t0},
		"zero":          {},
		"separators":    {Tool: "a|b:c", Class: "1:x", Trust: "|", Risk: 1e-300},
		"before 1970":   {Tool: "t", At: time.Date(1901, 1, 1, 0, 0, 0, 1, time.UTC)},
		"negative risk": {Risk: -0.5, At: time.Unix(0, 999_999_999)},
		"max float":     {Risk: math.MaxFloat64, Tool: "\x00\xff"},
	}
}

func TestStepCodecRoundTrip(t *testing.T) {
	for name, s := range codecCases() {
		t.Run(name, func(t *testing.T) {
			got, err := decodeStep(encodeStep(s))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(s, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeStepRejectsMalformed(t *testing.T) {
	for _, rec := range []string{"", "2|", "1|", "1|1|2|0.5|0|", "1|||x|0|0:0:0:", "1|||0|2|0:0:0:", "1|||0|0|5:ab0:0:",
		"1|||0|0|0:0:0:extra", "1|1|1000000000|0|0|0:0:0:", "1|x|1|0|0|0:0:0:", "1|||0|0|-1:0:0:"} {
		if s, err := decodeStep(rec); err == nil {
			t.Errorf("decodeStep(%q) = %+v, want an error", rec, s)
		}
	}
}

func TestDecodePrior(t *testing.T) {
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

// FuzzDecodeStep: any stored record decodes or fails without panicking, and a
// record that decodes re-encodes to itself.
func FuzzDecodeStep(f *testing.F) {
	for _, s := range codecCases() {
		f.Add(encodeStep(s))
	}
	f.Add("1|||0|0|0:0:0:")
	f.Fuzz(func(t *testing.T, rec string) {
		s, err := decodeStep(rec)
		if err != nil {
			return
		}
		again, err := decodeStep(encodeStep(s))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !cmp.Equal(s, again, cmp.Comparer(func(a, b float64) bool { return a == b || (a != a && b != b) })) {
			t.Fatalf("round trip changed %+v to %+v", s, again)
		}
	})
}

// FuzzEncodeStep: every summary survives the round trip.
func FuzzEncodeStep(f *testing.F) {
	f.Add("send_email", "external_send", "untrusted", true, 0.275, int64(1772366400), int64(5))
	f.Fuzz(func(t *testing.T, tool, class, trust string, untrusted bool, risk float64, sec, nsec int64) {
		if math.IsNaN(risk) {
			return
		}
		s := StepSummary{Tool: tool, Class: class, Trust: trust, Untrusted: untrusted, Risk: risk,
			At: time.Unix(sec%(1<<40), nsec%1e9).UTC()}
		got, err := decodeStep(encodeStep(s))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(s, got); diff != "" {
			t.Fatal(diff)
		}
	})
}
