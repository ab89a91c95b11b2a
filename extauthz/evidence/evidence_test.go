package evidence

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
)

var t0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

// TestControlsAreTheSpecsMatrix: the control list is the specification's
// section 16 matrix, row for row (checked against the seed beside the
// repository, as CI lays it out).
func TestControlsAreTheSpecsMatrix(t *testing.T) {
	got := Controls()
	if len(got) != 12 || got[0].ID != "AIS-CTX-01" || got[11].ID != "AIS-GOV-01" || got[5] != (Control{ID: "AIS-EXE-02", Objective: "Execution Split", Layer: "Layer 3", Mandatory: "SHOULD",
		Description: "Agent runtimes SHOULD separate planning, evaluation, and deterministic execution."}) {
		t.Fatalf("controls: %+v", got)
	}
	seeds, _ := filepath.Glob("../../../shared/seeds/*.txt")
	found := false
	for _, f := range seeds {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		start := strings.Index(text, "\n16. Formal Control Matrix")
		if start < 0 || !strings.Contains(text, "AIS-EXE-02") {
			continue // the v0.1 seed: a smaller matrix, superseded
		}
		end := strings.Index(text[start:], "\n17. ")
		spec, err := ParseMatrix(text[start : start+end])
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(spec, got); diff != "" {
			t.Fatalf("%s section 16 (-spec +embedded):\n%s", f, diff)
		}
		found = true
	}
	if !found {
		t.Skip("no v1.0 seed in ../shared/seeds beside the repository")
	}
}

// fixture is an audit log of ten records a minute apart, rotated once, with
// its keys.
type fixture struct {
	path   string
	files  []string
	keys   audit.VerifyKeys
	signer ed25519.PrivateKey
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	now := t0
	l, err := audit.Open(path, audit.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	controls := [][]string{{}, {"AIS-RSK-01"}, {"AIS-CAP-01", "AIS-CAP-01"}, {"AIS-CTX-01", "AIS-EXE-01"}, {"AIS-NEW-99"}}
	for i := range 10 {
		rec := &audit.Record{TS: t0.Add(time.Duration(i) * time.Minute), DecisionID: fmt.Sprintf("d_%02d", i), RunID: "r", AgentID: "a", Tool: "db.read",
			Decision: "allow", ControlIDs: controls[i%len(controls)], ArgumentsHash: "sha256:abc"}
		if err := l.Write(rec); err != nil {
			t.Fatal(err)
		}
		if i == 4 {
			if _, err := l.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Write(&audit.Record{TS: t0.Add(3 * time.Minute), DecisionID: "e_1", Event: audit.EventRevocation, DecidedBy: "root", Detail: map[string]string{"jti": "j"}}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	chain, signing := audit.DefaultKeyFiles(path)
	keys, err := audit.LoadVerifyKeys(chain, signing)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := audit.LoadSigningKey(signing)
	if err != nil {
		t.Fatal(err)
	}
	files, err := audit.Files(path)
	if err != nil || len(files) != 2 {
		t.Fatalf("files %v %v", files, err)
	}
	return &fixture{path: path, files: files, keys: keys, signer: priv}
}

func (f *fixture) export(t *testing.T, from, to time.Time) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := Export(&buf, Options{Files: f.files, Keys: f.keys, Signer: f.signer, From: from, To: to, Now: t0}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func (f *fixture) pub() ed25519.PublicKey { return f.signer.Public().(ed25519.PublicKey) }

// TestExportHoldsTheRangeVerificationAndCoverage: the records of [from, to)
// as the log holds them, byte for byte, the log's verification, and every
// control of the matrix with its count and examples.
func TestExportHoldsTheRangeVerificationAndCoverage(t *testing.T) {
	f := newFixture(t)
	file := f.export(t, t0.Add(2*time.Minute), t0.Add(8*time.Minute)) // d_02 … d_07 and the event
	rep, err := Verify(bytes.NewReader(file), f.pub())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 7 || !rep.Verification.OK || rep.Verification.Result.Selected != 7 || len(rep.Header.Files) != 2 ||
		strings.Contains(string(file), filepath.Dir(f.path)) || rep.Verification.Result.Files[0].SealedBy != "the link from audit.jsonl" {
		t.Fatalf("report %+v", rep)
	}
	logs := readAll(t, f.files)
	lines := strings.Split(strings.TrimSuffix(string(file), "\n"), "\n")
	for _, l := range lines[1 : len(lines)-3] {
		if !strings.Contains(logs, "\n"+l+"\n") {
			t.Errorf("an exported record is not a line of the log: %s", l)
		}
	}
	count := map[string]int{}
	for _, c := range rep.Coverage.Controls {
		count[c.ID] = c.Count
	}
	// d_02 CAP-01 (once, though listed twice), d_03 CTX-01+EXE-01, d_04 NEW-99,
	// d_05 none, d_06 RSK-01, d_07 CAP-01.
	want := map[string]int{"AIS-CTX-01": 1, "AIS-CTX-02": 0, "AIS-CAP-01": 2, "AIS-CAP-02": 0, "AIS-EXE-01": 1, "AIS-EXE-02": 0,
		"AIS-OBS-01": 0, "AIS-OBS-02": 0, "AIS-RSK-01": 1, "AIS-EXP-01": 0, "AIS-EDG-01": 0, "AIS-GOV-01": 0}
	if diff := cmp.Diff(want, count); diff != "" || rep.Coverage.Exercised != 4 || rep.Coverage.Unknown["AIS-NEW-99"] != 1 ||
		rep.Coverage.Controls[2].Examples[0] != "d_02" {
		t.Fatalf("coverage %+v (-want +got):\n%s", rep.Coverage, diff)
	}
}

func readAll(t *testing.T, files []string) string {
	var sb strings.Builder
	sb.WriteString("\n")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sb.Write(b)
	}
	return sb.String()
}

// TestEveryChangedByteIsNamed: one byte changed in any line fails
// verification and names that line (and its record); so do deleted, moved,
// added and cut lines, and a wrong key.
func TestEveryChangedByteIsNamed(t *testing.T) {
	f := newFixture(t)
	file := f.export(t, time.Time{}, time.Time{})
	if _, err := Verify(bytes.NewReader(file), f.pub()); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(file), "\n")
	lines = lines[:len(lines)-1]
	n := len(lines)
	offset := 0
	for i, l := range lines {
		// Every byte of short lines, a spread of bytes of long ones.
		step := max(1, (len(l)-1)/40)
		for j := 0; j < len(l)-1; j += step {
			for _, b := range []byte{'x', '0'} {
				if l[j] == b {
					continue
				}
				bad := []byte(string(file))
				bad[offset+j] = b
				_, err := Verify(bytes.NewReader(bad), f.pub())
				var ble *BadLineError
				if !errors.As(err, &ble) || ble.Line != i+1 {
					t.Fatalf("byte %d of line %d changed to %q: %v, want line %d named", j, i+1, b, err, i+1)
				}
				// A record is named by its decision id, as far as the changed
				// line still says it.
				var rec struct {
					DecisionID string `json:"decision_id"`
				}
				if i > 0 && i < n-3 && json.Unmarshal(bad[offset:offset+len(l)], &rec) == nil && ble.DecisionID != rec.DecisionID {
					t.Fatalf("line %d named as record %q, it says %q: %v", i+1, ble.DecisionID, rec.DecisionID, err)
				}
			}
		}
		offset += len(l)
	}
	join := func(ls []string) []byte { return []byte(strings.Join(ls, "")) }
	cases := map[string]struct {
		file []byte
		line int
	}{
		"record deleted":  {join(append(append([]string{}, lines[:3]...), lines[4:]...)), 4},
		"records swapped": {join(append(append(append([]string{}, lines[:2]...), lines[3], lines[2]), lines[4:]...)), 3},
		"line added":      {join(append(append(append([]string{}, lines[:2]...), lines[2]), lines[2:]...)), 4},
		"cut short":       {file[:len(file)-10], n},
		"no newline":      {file[:len(file)-1], n},
		"trailer deleted": {join(lines[:n-1]), n - 1},
	}
	for name, c := range cases {
		_, err := Verify(bytes.NewReader(c.file), f.pub())
		var ble *BadLineError
		if !errors.As(err, &ble) || ble.Line != c.line {
			t.Errorf("%s: %v, want line %d named", name, err, c.line)
		}
	}
	other, _, _ := ed25519.GenerateKey(nil)
	if _, err := Verify(bytes.NewReader(file), other); err == nil || !strings.Contains(err.Error(), "not by the key given") {
		t.Errorf("wrong key: %v", err)
	}
}

// TestExportBounded: a range over the bounds fails before writing anything.
func TestExportBounded(t *testing.T) {
	f := newFixture(t)
	var buf bytes.Buffer
	_, err := Export(&buf, Options{Files: f.files, Keys: f.keys, Signer: f.signer, MaxRecords: 3})
	if !errors.Is(err, ErrTooLarge) || buf.Len() != 0 {
		t.Fatalf("%v, %d bytes written", err, buf.Len())
	}
	if _, err := Export(&buf, Options{Files: f.files, Keys: f.keys, Signer: f.signer, MaxBytes: 2000}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("byte bound: %v", err)
	}
}

// TestExportOfATamperedLog: an edited audit line still exports — up to the
// bad line, with the failure recorded — and the evidence verifies as intact
// but reports the log's failure, naming the log's line.
func TestExportOfATamperedLog(t *testing.T) {
	f := newFixture(t)
	last := f.files[len(f.files)-1]
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(`"d_07"`), []byte(`"d_77"`), 1)
	if err := os.WriteFile(last, b, 0o600); err != nil {
		t.Fatal(err)
	}
	file := f.export(t, time.Time{}, time.Time{})
	rep, err := Verify(bytes.NewReader(file), f.pub())
	if !errors.Is(err, ErrLogBroken) || !strings.Contains(err.Error(), "audit.jsonl line") || !strings.Contains(err.Error(), "edited") || rep.Verification.OK {
		t.Fatalf("%v %+v", err, rep.Verification)
	}
}
