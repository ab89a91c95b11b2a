package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"strings"
	"testing"
)

// tamperFixture is one log in three states: sealed by its sidecar while open
// (open), after Close (closed), and its sidecar when only d1-d4 were written
// (midSidecar); plus another log written with the same keys.
type tamperFixture struct {
	keys                   VerifyKeys
	signer                 ed25519.PrivateKey
	open, openSidecar      []byte
	closed, closedSidecar  []byte
	midSidecar             []byte
	other, otherSidecar    []byte
	openLines, closedLines []string
	otherLines             []string
	otherKey               []byte
	otherSigner            ed25519.PrivateKey
}

func newTamperFixture(t *testing.T) *tamperFixture {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	l, err := Open(path, Options{CheckpointEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	fx := &tamperFixture{}
	writeN(t, l, "d", 4)
	fx.midSidecar = readFile(t, path+SidecarSuffix)
	for i := 5; i <= 8; i++ {
		if err := l.Write(record(fmt.Sprintf("d%d", i), i)); err != nil {
			t.Fatal(err)
		}
	}
	fx.open, fx.openSidecar = readFile(t, path), readFile(t, path+SidecarSuffix)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fx.closed, fx.closedSidecar = readFile(t, path), readFile(t, path+SidecarSuffix)
	fx.openLines, fx.closedLines = splitLines(fx.open), splitLines(fx.closed)
	fx.keys, fx.signer = keysOf(t, path), signerOf(t, path)

	other := filepath.Join(dir, "other.jsonl") // same directory: same keys
	l, err = Open(other, Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "o", 3)
	l.Close()
	fx.other, fx.otherSidecar = readFile(t, other), readFile(t, other+SidecarSuffix)
	fx.otherLines = splitLines(fx.other)

	fx.otherKey = make([]byte, 32)
	rand.Read(fx.otherKey)
	_, fx.otherSigner, _ = ed25519.GenerateKey(rand.Reader)
	return fx
}

func join(lines []string) []byte { return []byte(strings.Join(lines, "")) }

// without returns lines without the 1-based lines given.
func without(lines []string, drop ...int) []string {
	var out []string
	for i, l := range lines {
		keep := true
		for _, d := range drop {
			keep = keep && i+1 != d
		}
		if keep {
			out = append(out, l)
		}
	}
	return out
}

func replaceLine(lines []string, n int, f func(string) string) []string {
	out := append([]string{}, lines...)
	out[n-1] = f(out[n-1])
	return out
}

func insertAfter(lines []string, n int, line string) []string {
	out := append([]string{}, lines[:n]...)
	out = append(out, line)
	return append(out, lines[n:]...)
}

// editCheckpoint re-encodes checkpoint line n after edit, with placeholder
// hashes: rechain from n to make the chain valid again, as a holder of the
// chain key (but not the signing key) could.
func editCheckpoint(t *testing.T, lines []string, n int, edit func(*Checkpoint)) []string {
	t.Helper()
	var cl controlLine
	if err := json.Unmarshal([]byte(lines[n-1]), &cl); err != nil || cl.Checkpoint == nil {
		t.Fatalf("line %d is not a checkpoint: %v", n, err)
	}
	edit(cl.Checkpoint)
	cl.PrevHash, cl.Hash = zeroHash, zeroHash
	var buf bytes.Buffer
	if err := encodeLine(&buf, &cl); err != nil {
		t.Fatal(err)
	}
	return replaceLine(lines, n, func(string) string { return buf.String() })
}

// editSidecar rewrites the newest slot's checkpoint JSON with a valid CRC.
func editSidecar(t *testing.T, data []byte, edit func(*Checkpoint)) []byte {
	t.Helper()
	out := bytes.Clone(data)
	best, bestSeq := -1, uint64(0)
	for slot := range 2 {
		raw := bytes.TrimRight(out[slot*slotSize:(slot+1)*slotSize], " \n")
		var c Checkpoint
		if len(raw) > 9 && json.Unmarshal(raw[9:], &c) == nil && c.Seq >= bestSeq {
			best, bestSeq = slot, c.Seq
		}
	}
	raw := bytes.TrimRight(out[best*slotSize:(best+1)*slotSize], " \n")
	var c Checkpoint
	json.Unmarshal(raw[9:], &c)
	edit(&c)
	js, _ := json.Marshal(&c)
	slot := fmt.Appendf(nil, "%08x %s", crc32.ChecksumIEEE(js), js)
	slot = append(slot, bytes.Repeat([]byte{' '}, slotSize-1-len(slot))...)
	copy(out[best*slotSize:], append(slot, '\n'))
	return out
}

// TestTamperingNamed: every way of altering a log fails verification, naming
// the first bad line (and its decision id when the line is a record).
func TestTamperingNamed(t *testing.T) {
	t.Parallel()
	fx := newTamperFixture(t)
	c, o := fx.closedLines, fx.openLines
	at := func(id string) int { return lineOf(t, c, id) }
	// closed: 1 header, 2 d1, 3 d2, 4 cp1, 5 d3, 6 d4, 7 d5, 8 cp2, 9 d6, 10 d7, 11 d8, 12 cp3
	if len(c) != 12 || at("cp1") != 4 || at("cp2") != 8 || at("cp3") != 12 || len(o) != 11 {
		t.Fatalf("fixture layout changed: %d lines, open %d", len(c), len(o))
	}

	tests := []struct {
		name     string
		log      []byte
		sidecar  []byte
		problem  Problem
		line     int
		decision string
	}{
		{"edited line", join(replaceLine(c, at("d3"), func(s string) string { return strings.Replace(s, `"allow"`, `"deny"`, 1) })), fx.closedSidecar, ProblemEdited, at("d3"), "d3"},
		{"edited last record", join(replaceLine(c, at("d8"), func(s string) string { return strings.Replace(s, `"db.read"`, `"db.drop"`, 1) })), fx.closedSidecar, ProblemEdited, at("d8"), "d8"},
		{"edited header", join(replaceLine(c, 1, func(s string) string { return strings.Replace(s, `"log_opened"`, `"log_openeD"`, 1) })), fx.closedSidecar, ProblemEdited, 1, ""},
		{"edited line, made invalid JSON", join(replaceLine(c, at("d2"), func(s string) string { return strings.Replace(s, `"allow"`, `"allow`, 1) })), fx.closedSidecar, ProblemEdited, at("d2"), "d2"},
		{"deleted middle line", join(without(c, at("d3"))), fx.closedSidecar, ProblemGap, at("d3"), "d4"},
		{"deleted two middle lines", join(without(c, at("d3"), at("d4"))), fx.closedSidecar, ProblemGap, at("d3"), "d5"},
		{"deleted first record", join(without(c, at("d1"))), fx.closedSidecar, ProblemGap, 2, "d2"},
		{"deleted header", join(without(c, 1)), fx.closedSidecar, ProblemGenesis, 1, "d1"},
		{"deleted last line", join(without(c, 12)), fx.closedSidecar, ProblemTruncated, 12, ""},
		{"deleted last three lines", join(c[:9]), fx.closedSidecar, ProblemTruncated, 10, ""},
		{"deleted last record of an open log", join(o[:10]), fx.openSidecar, ProblemTruncated, 11, ""},
		{"truncated mid-line", fx.closed[:len(fx.closed)-40], fx.closedSidecar, ProblemTruncated, 12, ""},
		{"truncated mid-line, sealed lines lost", fx.closed[:len(fx.closed)-len(c[11])-40], fx.closedSidecar, ProblemTruncated, 11, ""},
		{"truncated to nothing", nil, fx.closedSidecar, ProblemTruncated, 1, ""},
		{"reordered pair", join(replaceLine(replaceLine(c, at("d3"), func(string) string { return c[at("d4")-1] }), at("d4"), func(string) string { return c[at("d3")-1] })), fx.closedSidecar, ProblemReordered, at("d3"), "d4"},
		{"line copied", join(insertAfter(c, at("d3"), c[at("d3")-1])), fx.closedSidecar, ProblemReordered, at("d3") + 1, "d3"},
		{"line of another log spliced in", join(insertAfter(c, at("d3"), fx.otherLines[1])), fx.closedSidecar, ProblemReordered, at("d3") + 1, "o1"},
		{"another log's header spliced in", join(insertAfter(c, at("d3"), fx.otherLines[0])), fx.closedSidecar, ProblemGenesis, at("d3") + 1, ""},
		{"chain rebuilt under another key", join(rechain(t, replaceLine(c, 1, func(s string) string {
			return strings.Replace(s, chainKeyID(fx.keys.Chain), chainKeyID(fx.otherKey), 1)
		}), fx.otherKey, 1)), fx.closedSidecar, ProblemWrongKey, 1, ""},
		{"chain rebuilt under another key, naming ours", join(rechain(t, c, fx.otherKey, 1)), fx.closedSidecar, ProblemEdited, 1, ""},
		{"chain rebuilt from an edited line by a chain-key holder", join(rechain(t, replaceLine(c, at("d4"), func(s string) string { return strings.Replace(s, `"allow"`, `"deny"`, 1) }), fx.keys.Chain, at("d4"))),
			fx.closedSidecar, ProblemBadCheckpoint, at("cp2"), ""},
		{"unsealed tail rebuilt by a chain-key holder", join(rechain(t, replaceLine(o, at("d8"), func(s string) string { return strings.Replace(s, `"allow"`, `"deny"`, 1) }), fx.keys.Chain, at("d8"))),
			fx.openSidecar, ProblemBadCheckpoint, at("d8"), ""},
		{"forged checkpoint signature", join(rechain(t, editCheckpoint(t, c, at("cp2"), func(cp *Checkpoint) { cp.Sig = ed25519.Sign(fx.otherSigner, cp.message()) }), fx.keys.Chain, at("cp2"))),
			fx.closedSidecar, ProblemForged, at("cp2"), ""},
		{"checkpoint by an unknown key", join(rechain(t, editCheckpoint(t, c, at("cp2"), func(cp *Checkpoint) { cp.sign(fx.otherSigner) }), fx.keys.Chain, at("cp2"))),
			fx.closedSidecar, ProblemForged, at("cp2"), ""},
		{"checkpoint count disagrees", join(rechain(t, editCheckpoint(t, c, at("cp2"), func(cp *Checkpoint) { cp.Lines-- }), fx.keys.Chain, at("cp2"))),
			fx.closedSidecar, ProblemBadCheckpoint, at("cp2"), ""},
		{"checkpoint head disagrees", join(rechain(t, editCheckpoint(t, c, at("cp2"), func(cp *Checkpoint) { cp.Head = strings.Repeat("a", 64) }), fx.keys.Chain, at("cp2"))),
			fx.closedSidecar, ProblemBadCheckpoint, at("cp2"), ""},
		{"old checkpoint replayed later", join(rechain(t, insertAfter(c, at("d7"), c[at("cp1")-1]), fx.keys.Chain, at("d7")+1)),
			fx.closedSidecar, ProblemBadCheckpoint, at("d7") + 1, ""},
		{"forged sidecar", fx.closed, editSidecar(t, fx.closedSidecar, func(cp *Checkpoint) { cp.Lines, cp.Bytes = 11, cp.Bytes-100 }), ProblemForged, 0, ""},
		{"stale sidecar (an old copy put back)", fx.closed, fx.midSidecar, ProblemStaleCheckpoint, at("cp3"), ""},
		{"sidecar of another log", fx.closed, fx.otherSidecar, ProblemBadCheckpoint, 1, ""},
		{"log replaced by another", fx.other, fx.closedSidecar, ProblemBadCheckpoint, 1, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, ve := verifyBytes(t, tc.log, tc.sidecar, fx.keys)
			if ve == nil {
				t.Fatal("tampered log verified")
			}
			t.Log(ve)
			if ve.Problem != tc.problem || ve.Line != tc.line || ve.DecisionID != tc.decision {
				t.Fatalf("got %s line %d decision %q (%v), want %s line %d decision %q", ve.Problem, ve.Line, ve.DecisionID, ve, tc.problem, tc.line, tc.decision)
			}
		})
	}

	// The untouched states verify.
	for name, s := range map[string][2][]byte{"open": {fx.open, fx.openSidecar}, "closed": {fx.closed, fx.closedSidecar}} {
		if _, ve := verifyBytes(t, s[0], s[1], fx.keys); ve != nil {
			t.Fatalf("%s log: %v", name, ve)
		}
	}
}

// TestVerifyWithWrongKeys: the verifier's key is not the log's.
func TestVerifyWithWrongKeys(t *testing.T) {
	t.Parallel()
	fx := newTamperFixture(t)
	_, ve := verifyBytes(t, fx.closed, fx.closedSidecar, VerifyKeys{Chain: fx.otherKey, Public: fx.keys.Public})
	if ve == nil || ve.Problem != ProblemWrongKey || ve.Line != 1 {
		t.Fatalf("wrong chain key: %v", ve)
	}
	_, ve = verifyBytes(t, fx.closed, fx.closedSidecar, VerifyKeys{Chain: fx.keys.Chain, Public: []ed25519.PublicKey{fx.otherSigner.Public().(ed25519.PublicKey)}})
	if ve == nil || ve.Problem != ProblemForged {
		t.Fatalf("wrong public key: %v", ve)
	}
}

// TestAnchorCatchesRollback: the log and its sidecar rolled back together to
// an earlier consistent state verify on the host; a checkpoint kept elsewhere
// catches it.
func TestAnchorCatchesRollback(t *testing.T) {
	t.Parallel()
	fx := newTamperFixture(t)
	sealed, err := parseSidecar(fx.openSidecar, map[string]ed25519.PublicKey{KeyID(fx.keys.Public[0]): fx.keys.Public[0]})
	if err != nil || sealed == nil {
		t.Fatal(err)
	}
	mid, _ := parseSidecar(fx.midSidecar, map[string]ed25519.PublicKey{KeyID(fx.keys.Public[0]): fx.keys.Public[0]})
	rolledBack := join(fx.openLines[:mid.Lines])
	if _, ve := verifyBytes(t, rolledBack, fx.midSidecar, fx.keys); ve != nil {
		t.Fatalf("rolled-back pair: %v", ve)
	}
	_, err = Verify(bytes.NewReader(rolledBack), fx.midSidecar, VerifyOptions{Keys: fx.keys, Anchors: []Checkpoint{*sealed}})
	if ve := asVerifyError(err); ve == nil || ve.Problem != ProblemTruncated || ve.Line != mid.Lines+1 {
		t.Fatalf("with an anchor: %v", err)
	}
	res, err := Verify(bytes.NewReader(fx.closed), fx.closedSidecar, VerifyOptions{Keys: fx.keys, Anchors: []Checkpoint{*sealed}})
	if err != nil || !strings.HasPrefix(res.Files[0].SealedBy, "the sidecar") {
		t.Fatalf("anchor on the intact log: %+v %v", res.Files, err)
	}
}
