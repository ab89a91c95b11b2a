package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// VerifyKeys are what a verifier needs: the chain key (the same secret the
// writer uses: without it no line can be checked) and the public keys that
// checkpoints may be signed with.
type VerifyKeys struct {
	Chain  []byte
	Public []ed25519.PublicKey
}

// LoadVerifyKeys reads the chain key file and a public key file
// (LoadPublicKey: a public key or the signing key itself).
func LoadVerifyKeys(chainKeyFile, publicKeyFile string) (VerifyKeys, error) {
	chain, err := LoadChainKey(chainKeyFile)
	if err != nil {
		return VerifyKeys{}, err
	}
	pub, err := LoadPublicKey(publicKeyFile)
	if err != nil {
		return VerifyKeys{}, err
	}
	return VerifyKeys{Chain: chain, Public: []ed25519.PublicKey{pub}}, nil
}

// VerifyOptions say what to check and what to report.
type VerifyOptions struct {
	Keys VerifyKeys
	// RequireSidecar fails verification when the last file has no sidecar
	// checkpoint. Without one, lines deleted after the last in-log checkpoint
	// cannot be noticed; the result counts those lines as unsealed.
	RequireSidecar bool
	// Anchors are checkpoints kept elsewhere (the last evidence bundle, a copy
	// shipped off the host): each must name one of the files and match the
	// line it seals. They catch what nothing on the host can: the log and its
	// sidecar both rolled back to an older, consistent state.
	Anchors []Checkpoint
	// From and To select records by ts, [From, To), zero meaning unbounded:
	// Visit sees them and VerifyResult.Selected describes them.
	From, To time.Time
	// Visit, if set, is called for every selected record line once its hash
	// and link have been checked. The record is trustworthy only if the whole
	// verification succeeds and VerifyResult.SelectedSealed holds. An error
	// from Visit stops verification and is returned.
	Visit func(Entry) error
}

// Entry is one selected record line handed to VerifyOptions.Visit.
type Entry struct {
	File       string
	Line       int // 1-based, in File
	TS         time.Time
	Event      string
	DecisionID string
	Raw        []byte // the line without its newline; valid only during the call
}

// Problem classifies a verification failure.
type Problem string

const (
	ProblemMalformed       Problem = "malformed"         // not a chain line
	ProblemEdited          Problem = "edited"            // the line's hash does not match its content
	ProblemWrongKey        Problem = "wrong_key"         // the log names another chain key than the one given
	ProblemGap             Problem = "gap"               // the line does not follow the one before: lines missing or moved
	ProblemReordered       Problem = "reordered"         // the line and the next one are swapped
	ProblemGenesis         Problem = "genesis"           // no valid header, or a header in the middle (spliced logs)
	ProblemBadCheckpoint   Problem = "bad_checkpoint"    // a checkpoint's log, count, offset or head disagrees with the chain
	ProblemForged          Problem = "forged_checkpoint" // a checkpoint's signature does not verify, or its key is unknown
	ProblemStaleCheckpoint Problem = "stale_checkpoint"  // a checkpoint older than one already seen
	ProblemTruncated       Problem = "truncated"         // lines a checkpoint sealed are gone
	ProblemLink            Problem = "link"              // a file does not continue the file before it
	ProblemNoSidecar       Problem = "no_sidecar"        // RequireSidecar and the last file has none
)

// VerifyError names the first bad line. Line is 1-based within File; 0 when
// the problem is the sidecar itself rather than a line.
type VerifyError struct {
	File       string  `json:"file"`
	Line       int     `json:"line"`
	DecisionID string  `json:"decision_id,omitempty"`
	Problem    Problem `json:"problem"`
	Detail     string  `json:"detail"`
}

func (e *VerifyError) Error() string {
	where := e.File
	if where == "" {
		where = "log"
	}
	if e.Line > 0 {
		where = fmt.Sprintf("%s line %d", where, e.Line)
	}
	if e.DecisionID != "" {
		where += " (decision " + e.DecisionID + ")"
	}
	return fmt.Sprintf("%s: %s: %s", where, e.Problem, e.Detail)
}

// FileResult is what was verified in one file.
type FileResult struct {
	Path       string `json:"path"`
	LogID      string `json:"log_id"`
	Link       *Link  `json:"link,omitempty"` // the log this file continues
	TotalLines int    `json:"total_lines"`    // every line: header, records, checkpoints
	Records    int    `json:"records"`
	// Checkpoints counts the checkpoint lines.
	Checkpoints int         `json:"checkpoints"`
	Bytes       int64       `json:"bytes"`
	Head        string      `json:"head"` // hash of the last line
	Sidecar     *Checkpoint `json:"sidecar,omitempty"`
	// SealedThrough is the last line covered by a verified checkpoint (in the
	// file, its sidecar, an anchor, or the next file's link); SealedBy says which.
	SealedThrough   int    `json:"sealed_through"`
	SealedBy        string `json:"sealed_by,omitempty"`
	UnsealedLines   int    `json:"unsealed_lines"`   // lines after SealedThrough
	UnsealedRecords int    `json:"unsealed_records"` // records among them
	// TornTailBytes is the size of a partial last line (no newline): a write
	// in progress, or one a crash tore. Opening the log cuts it off.
	TornTailBytes int `json:"torn_tail_bytes,omitempty"`
}

// Position is a line in one of the verified files.
type Position struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

// VerifyResult summarises a verification. On failure it holds what was
// verified before the bad line.
type VerifyResult struct {
	Files []FileResult `json:"files"`
	// Lines counts record lines (Checks and events) across the files; headers
	// and checkpoints are counted in FileResult.TotalLines and Checkpoints.
	Lines       int    `json:"lines"`
	Checkpoints int    `json:"checkpoints"`
	LogID       string `json:"log_id"` // of the last file
	Head        string `json:"head"`   // hash of the last line of the last file

	// Selected counts the records in [From, To); First and Last name them.
	Selected       int       `json:"selected"`
	FirstSelected  *Position `json:"first_selected,omitempty"`
	LastSelected   *Position `json:"last_selected,omitempty"`
	SelectedSealed bool      `json:"selected_sealed"` // every selected record is sealed
}

// VerifyFile verifies the log at path with its sidecar (if present) and the
// keys next to it (DefaultKeyFiles), as the embedded default writes them.
func VerifyFile(path string) (VerifyResult, error) {
	chainFile, signingFile := DefaultKeyFiles(path)
	keys, err := LoadVerifyKeys(chainFile, signingFile)
	if err != nil {
		return VerifyResult{}, err
	}
	return VerifyFiles([]string{path}, VerifyOptions{Keys: keys})
}

// VerifyFiles verifies files as one chain, oldest first (rotated files, then
// the live one): each must verify, and each after the first must continue the
// one before it. Each file's sidecar is PATH.checkpoint, when present. The
// sidecar is read before its log, so a log being written verifies.
func VerifyFiles(paths []string, opts VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	if len(paths) == 0 {
		return res, errors.New("audit: verify: no files")
	}
	v, err := newVerifier(&opts, &res)
	if err != nil {
		return res, err
	}
	for i, path := range paths {
		sidecar, err := readSidecar(path + SidecarSuffix)
		if err != nil {
			return res, fmt.Errorf("audit: verify: %w", err)
		}
		f, err := os.Open(path)
		if err != nil {
			return res, fmt.Errorf("audit: verify: %w", err)
		}
		err = v.file(path, f, sidecar, i == len(paths)-1)
		f.Close()
		if err != nil {
			return res, err
		}
	}
	return res, v.finish()
}

// Verify verifies one log read from r, with its sidecar's contents (nil for
// none).
func Verify(r io.Reader, sidecar []byte, opts VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	v, err := newVerifier(&opts, &res)
	if err != nil {
		return res, err
	}
	if err := v.file("", r, sidecar, true); err != nil {
		return res, err
	}
	return res, v.finish()
}

// verifier walks a sequence of files.
type verifier struct {
	opts     *VerifyOptions
	res      *VerifyResult
	mac      *chainMAC
	chainID  string
	keys     map[string]ed25519.PublicKey
	anchored map[int]bool // indexes into opts.Anchors that matched
	lastSel  []int        // per file: the last selected line, 0 for none
	line     []byte       // read buffers
	next     []byte
}

func newVerifier(opts *VerifyOptions, res *VerifyResult) (*verifier, error) {
	if len(opts.Keys.Chain) != chainKeyLen {
		return nil, fmt.Errorf("audit: verify: chain key of %d bytes, want %d", len(opts.Keys.Chain), chainKeyLen)
	}
	if len(opts.Keys.Public) == 0 {
		return nil, errors.New("audit: verify: no public key to check checkpoints with")
	}
	keys := make(map[string]ed25519.PublicKey, len(opts.Keys.Public))
	for _, k := range opts.Keys.Public {
		keys[KeyID(k)] = k
	}
	res.SelectedSealed = true
	return &verifier{opts: opts, res: res, mac: newChainMAC(opts.Keys.Chain), chainID: chainKeyID(opts.Keys.Chain), keys: keys, anchored: map[int]bool{}}, nil
}

func (v *verifier) file(path string, r io.Reader, sidecarData []byte, last bool) error {
	sidecar, err := parseSidecar(sidecarData, v.keys)
	if err != nil {
		return &VerifyError{File: displayName(path) + SidecarSuffix, Problem: ProblemForged, Detail: "sidecar " + err.Error()}
	}
	if sidecar == nil && last && v.opts.RequireSidecar {
		return &VerifyError{File: displayName(path) + SidecarSuffix, Problem: ProblemNoSidecar, Detail: "no valid checkpoint sidecar: deleted lines after the last in-log checkpoint could not be noticed"}
	}
	w := &walker{file: path, mac: v.mac, chainID: v.chainID, keys: v.keys, sidecar: sidecar, opts: v.opts, res: v.res}
	for i, a := range v.opts.Anchors {
		w.anchors = append(w.anchors, anchor{cp: a, index: i})
	}
	w.fr.Path, w.fr.Sidecar = path, sidecar
	br := bufio.NewReaderSize(r, 64<<10)
	// A partial last line is a write in progress or torn by a crash: never
	// acknowledged, never sealed (lines cut from the sealed part are missing
	// lines), so it is reported, not failed. Open cuts it off.
	partial, werr := w.walk(br, &v.line, &v.next)
	w.fr.TornTailBytes = partial
	// Link this file to the one before it.
	if werr == nil && len(v.res.Files) > 0 {
		prev := &v.res.Files[len(v.res.Files)-1]
		want := Link{LogID: prev.LogID, Lines: prev.TotalLines, Head: prev.Head}
		switch {
		case w.fr.Link == nil:
			werr = w.fail(1, "", ProblemLink, fmt.Sprintf("starts a new chain; it should continue %s (log %s)", prev.Path, prev.LogID))
		case *w.fr.Link != want:
			werr = w.fail(1, "", ProblemLink, fmt.Sprintf("continues log %s at line %d (head %.16s…), but %s is log %s ending at line %d (head %.16s…): a file is missing, out of order, or cut short",
				w.fr.Link.LogID, w.fr.Link.Lines, w.fr.Link.Head, prev.Path, prev.LogID, prev.TotalLines, prev.Head))
		case w.fr.SealedThrough >= 1 || w.sidecarViaLink:
			// This file's sealed header (or the sidecar it links to) vouches for
			// every line of the one before.
			prev.SealedThrough, prev.SealedBy, prev.UnsealedLines, prev.UnsealedRecords = prev.TotalLines, "the link from "+displayName(path), 0, 0
		}
	}
	if werr == nil {
		werr = w.end()
	}
	for _, a := range w.anchors {
		if a.matched {
			v.anchored[a.index] = true
		}
	}
	v.res.Files = append(v.res.Files, w.fr)
	v.lastSel = append(v.lastSel, w.lastSelected)
	if w.lastSelected > 0 {
		v.res.LastSelected = &Position{File: path, Line: w.lastSelected}
	}
	v.res.Lines += w.fr.Records
	v.res.Checkpoints += w.fr.Checkpoints
	v.res.LogID, v.res.Head = w.fr.LogID, w.fr.Head
	return werr
}

func (v *verifier) finish() error {
	for i, a := range v.opts.Anchors {
		if !v.anchored[i] {
			return &VerifyError{Problem: ProblemTruncated, Detail: fmt.Sprintf("anchor checkpoint seq %d of log %s (%d lines) matches none of the files: the log it seals is missing", a.Seq, a.LogID, a.Lines)}
		}
	}
	for i, f := range v.res.Files {
		if v.lastSel[i] > f.SealedThrough {
			v.res.SelectedSealed = false
		}
	}
	return nil
}

func displayName(path string) string {
	if path == "" {
		return "log"
	}
	return path
}

var errUnlinked = errors.New("unlinked")

type anchor struct {
	cp      Checkpoint
	index   int
	matched bool
}

// walker checks one file line by line. Open uses it too, from the sidecar's
// state, to check the lines a crash may have left unsealed.
type walker struct {
	file    string
	mac     *chainMAC
	chainID string
	keys    map[string]ed25519.PublicKey
	sidecar *Checkpoint
	anchors []anchor
	opts    *VerifyOptions // nil in Open
	res     *VerifyResult  // nil in Open

	fr             FileResult
	n              int    // lines accepted
	off            int64  // bytes accepted
	head           string // hash of line n
	lastSeq        uint64
	lastCPLine     int
	sealedRecords  int  // records in lines 1..fr.SealedThrough
	lastSelected   int  // the last line handed to the selection
	sidecarViaLink bool // the sidecar is the previous log's last checkpoint
	sum            [hashHexLen]byte
	fields         lineFields // of the latest line
	prev           string     // the prev_hash of a line that did not follow
}

func (w *walker) fail(line int, decision string, p Problem, detail string) error {
	return &VerifyError{File: w.file, Line: line, DecisionID: decision, Problem: p, Detail: detail}
}

// step checks one complete line (without its newline). It returns errUnlinked
// when the line is intact but does not follow the one before.
func (w *walker) step(line []byte) error {
	n := w.n + 1
	prefix, sum, ok := splitLine(line)
	var prev []byte
	if ok {
		prev, ok = prevHashOf(prefix)
	}
	if !ok {
		return w.fail(n, decisionOf(line), ProblemMalformed, `does not end with "prev_hash" and "hash": not a line of a keyed audit log`)
	}
	w.mac.line(prefix, w.sum[:])
	if !bytes.Equal(w.sum[:], sum) {
		var h lineFields
		_ = json.Unmarshal(line, &h)
		if n == 1 && h.ChainKeyID != "" && h.ChainKeyID != w.chainID {
			return w.fail(n, "", ProblemWrongKey, fmt.Sprintf("the log was written under chain key %s, the key given is %s: a wrong --key, or the chain was rebuilt under another key", h.ChainKeyID, w.chainID))
		}
		return w.fail(n, decisionOf(line), ProblemEdited, "its hash does not match its content: the line was edited, or the chain rebuilt under another key")
	}
	// The MAC holds, so these are the bytes the writer encoded: a record line
	// can be read by position; others are decoded in full.
	f := &w.fields
	*f = lineFields{}
	if !readRecordHead(line, f) {
		if err := json.Unmarshal(line, f); err != nil {
			return w.fail(n, "", ProblemMalformed, "not a JSON line: "+err.Error())
		}
	}
	if w.n == 0 {
		if err := w.header(f, string(prev)); err != nil {
			return err
		}
	} else {
		if f.Event == EventLogOpened {
			return w.fail(n, f.DecisionID, ProblemGenesis, "a log header in the middle of the log: lines of another log were spliced in")
		}
		if string(prev) != w.head {
			w.prev = string(prev)
			return errUnlinked
		}
	}
	prevHead, startOff := w.head, w.off
	w.n, w.off, w.head = n, w.off+int64(len(line))+1, string(sum)
	w.fr.TotalLines, w.fr.Bytes, w.fr.Head = w.n, w.off, w.head

	switch f.Event {
	case EventLogOpened:
	case EventCheckpoint:
		if err := w.checkpoint(n, f.Checkpoint, prevHead, startOff); err != nil {
			return err
		}
	default:
		w.fr.Records++
		if err := w.selectRecord(n, f, line); err != nil {
			return err
		}
	}
	if c := w.sidecar; c != nil && !w.sidecarViaLink && c.Lines == n {
		if err := w.matches(c, "the sidecar checkpoint"); err != nil {
			return err
		}
		w.sealed(n, fmt.Sprintf("the sidecar checkpoint (seq %d)", c.Seq))
	}
	for i := range w.anchors {
		if a := &w.anchors[i]; a.cp.LogID == w.fr.LogID && a.cp.Lines == n {
			if err := w.matches(&a.cp, fmt.Sprintf("anchor checkpoint seq %d", a.cp.Seq)); err != nil {
				return err
			}
			a.matched = true
			w.sealed(n, fmt.Sprintf("anchor checkpoint seq %d", a.cp.Seq))
		}
	}
	return nil
}

// prevHashOf returns the prev_hash at the end of a line's MAC'd prefix.
func prevHashOf(prefix []byte) ([]byte, bool) {
	const field = `"prev_hash":"`
	if len(prefix) < len(field)+hashHexLen+1 || prefix[len(prefix)-1] != '"' {
		return nil, false
	}
	start := len(prefix) - 1 - hashHexLen
	if string(prefix[start-len(field):start]) != field {
		return nil, false
	}
	return prefix[start : start+hashHexLen], true
}

// readRecordHead reads ts, decision_id and event from the start of a record
// line as the encoder writes it, {"ts":"…","decision_id":"…"[,"event":"…"],
// reporting false for anything else (a header or checkpoint line, an escaped
// string), which is then decoded in full.
func readRecordHead(line []byte, f *lineFields) bool {
	rest, ok := bytes.CutPrefix(line, []byte(`{"ts":"`))
	if !ok {
		return false
	}
	ts, rest, ok := cutString(rest)
	if !ok {
		return false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"decision_id":"`)); !ok {
		return false
	}
	id, rest, ok := cutString(rest)
	if !ok {
		return false
	}
	if r, isEvent := bytes.CutPrefix(rest, []byte(`,"event":"`)); isEvent {
		ev, _, ok := cutString(r)
		if !ok || isControl(string(ev)) {
			return false
		}
		f.Event = string(ev)
	}
	f.tsRaw, f.DecisionID = ts, string(id)
	return true
}

// cutString returns a JSON string's contents up to its closing quote, and
// what follows it; false if it holds an escape.
func cutString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexAny(b, `"\`)
	if i < 0 || b[i] != '"' {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// decisionOf finds a line's decision id for a message, if it can.
func decisionOf(line []byte) string {
	var f lineFields
	if readRecordHead(line, &f) {
		return f.DecisionID
	}
	if json.Unmarshal(line, &f) == nil {
		return f.DecisionID
	}
	return ""
}

// header checks line 1: a log header whose prev_hash is the keyed genesis of
// the log it names.
func (w *walker) header(f *lineFields, prev string) error {
	if f.Event != EventLogOpened || f.LogID == "" {
		return w.fail(1, f.DecisionID, ProblemGenesis, "the first line is not a log header: lines were deleted from the start, or this is not a keyed audit log")
	}
	if prev != w.mac.genesis(f.LogID, f.Link) {
		return w.fail(1, "", ProblemGenesis, fmt.Sprintf("prev_hash is not the keyed genesis of log %s", f.LogID))
	}
	w.fr.LogID, w.fr.Link = f.LogID, f.Link
	if c := w.sidecar; c != nil && c.LogID != f.LogID {
		// Rotation writes the new file's header, then its first sidecar
		// checkpoint; in between the sidecar still seals the previous log's end,
		// which is exactly what the header links to.
		if l := f.Link; l == nil || l.LogID != c.LogID || l.Lines != c.Lines || l.Head != c.Head {
			return w.fail(1, "", ProblemBadCheckpoint, fmt.Sprintf("the sidecar checkpoint is of log %s, this file is log %s", c.LogID, f.LogID))
		}
		w.sidecarViaLink = true
	}
	return nil
}

// checkpoint checks a checkpoint line at line n: it must seal exactly the
// lines before it, be validly signed, and be newer than the one before.
func (w *walker) checkpoint(n int, c *Checkpoint, prevHead string, startOff int64) error {
	w.fr.Checkpoints++
	switch {
	case c == nil:
		return w.fail(n, "", ProblemBadCheckpoint, "a checkpoint line without a checkpoint")
	case c.LogID != w.fr.LogID:
		return w.fail(n, "", ProblemBadCheckpoint, fmt.Sprintf("a checkpoint of log %s in log %s", c.LogID, w.fr.LogID))
	case c.Lines != n-1:
		return w.fail(n, "", ProblemBadCheckpoint, fmt.Sprintf("the checkpoint seals %d lines but %d lines precede it", c.Lines, n-1))
	case c.Head != prevHead:
		return w.fail(n, "", ProblemBadCheckpoint, fmt.Sprintf("the checkpoint's head %.16s… is not the hash of line %d (%.16s…): the lines before it were rewritten", c.Head, n-1, prevHead))
	case c.Bytes != startOff:
		return w.fail(n, "", ProblemBadCheckpoint, fmt.Sprintf("the checkpoint seals %d bytes but the lines before it have %d", c.Bytes, startOff))
	}
	if err := c.verify(w.keys); err != nil {
		return w.fail(n, "", ProblemForged, "checkpoint "+err.Error())
	}
	if c.Seq <= w.lastSeq {
		return w.fail(n, "", ProblemStaleCheckpoint, fmt.Sprintf("checkpoint seq %d is not after seq %d at line %d: an old checkpoint was replayed", c.Seq, w.lastSeq, w.lastCPLine))
	}
	w.lastSeq, w.lastCPLine = c.Seq, n
	w.sealed(n-1, fmt.Sprintf("the checkpoint at line %d", n))
	return nil
}

// matches checks that checkpoint c, which seals line w.n, agrees with the chain.
func (w *walker) matches(c *Checkpoint, what string) error {
	if c.Head != w.head || c.Bytes != w.off {
		return w.fail(w.n, "", ProblemBadCheckpoint, fmt.Sprintf("%s seals this line with head %.16s… at byte %d, the chain has %.16s… at byte %d: the log was rewritten", what, c.Head, c.Bytes, w.head, w.off))
	}
	return nil
}

// sealed records that lines 1..line are covered by a verified checkpoint.
func (w *walker) sealed(line int, by string) {
	if line <= w.fr.SealedThrough {
		return
	}
	w.fr.SealedThrough, w.fr.SealedBy = line, by
	w.sealedRecords = w.fr.Records
}

func (w *walker) selectRecord(n int, f *lineFields, line []byte) error {
	if w.opts == nil {
		return nil
	}
	if filtered := !w.opts.From.IsZero() || !w.opts.To.IsZero(); filtered || w.opts.Visit != nil {
		if f.tsRaw != nil {
			f.TS, _ = time.Parse(time.RFC3339Nano, string(f.tsRaw))
		}
		if filtered && (f.TS.Before(w.opts.From) || !w.opts.To.IsZero() && !f.TS.Before(w.opts.To)) {
			return nil
		}
	}
	w.res.Selected++
	if w.res.FirstSelected == nil {
		w.res.FirstSelected = &Position{File: w.file, Line: n}
	}
	w.lastSelected = n
	if w.opts.Visit != nil {
		return w.opts.Visit(Entry{File: w.file, Line: n, TS: f.TS, Event: f.Event, DecisionID: f.DecisionID, Raw: line})
	}
	return nil
}

// walk checks every complete line from br. It returns the length of a
// partial last line (no newline), which the caller reports or cuts off.
func (w *walker) walk(br *bufio.Reader, buf, next *[]byte) (partial int, err error) {
	for {
		line, complete, err := readLine(br, buf)
		if err != nil {
			return 0, w.fail(w.n+1, "", ProblemMalformed, err.Error())
		}
		if !complete {
			return len(line), nil
		}
		if err := w.step(line); errors.Is(err, errUnlinked) {
			return 0, w.unlinked(br, next)
		} else if err != nil {
			return 0, err
		}
	}
}

// unlinked explains an intact line that does not follow the one before,
// looking at the next line to tell a swapped pair from a gap.
func (w *walker) unlinked(br *bufio.Reader, buf *[]byte) error {
	n, decision := w.n+1, w.fields.DecisionID
	if next, complete, err := readLine(br, buf); err == nil && complete {
		nprefix, nsum, ok := splitLine(next)
		var nprev []byte
		if ok {
			nprev, ok = prevHashOf(nprefix)
		}
		if ok && string(nprev) == w.head {
			if string(nsum) == w.prev {
				return w.fail(n, decision, ProblemReordered, fmt.Sprintf("lines %d and %d are swapped", n, n+1))
			}
			return w.fail(n, decision, ProblemReordered, fmt.Sprintf("the line does not belong here (line %d follows line %d): it was moved, copied or spliced in", n+1, n-1))
		}
	}
	return w.fail(n, decision, ProblemGap, fmt.Sprintf("it does not follow line %d: lines are missing before it, or it was moved here", n-1))
}

// end runs the checks that need the whole file.
func (w *walker) end() error {
	if w.n == 0 {
		if w.sidecar != nil {
			return w.fail(1, "", ProblemTruncated, fmt.Sprintf("the file is empty but its sidecar seals %d lines of log %s", w.sidecar.Lines, w.sidecar.LogID))
		}
		return w.fail(1, "", ProblemMalformed, "empty file: a log starts with a header line")
	}
	if c := w.sidecar; c != nil && !w.sidecarViaLink {
		if c.Lines > w.n {
			return w.fail(w.n+1, "", ProblemTruncated, fmt.Sprintf("missing: the sidecar checkpoint (seq %d) seals %d lines, the file has %d: lines were deleted from the end or the file truncated", c.Seq, c.Lines, w.n))
		}
		if c.Seq < w.lastSeq {
			return w.fail(w.lastCPLine, "", ProblemStaleCheckpoint, fmt.Sprintf("the sidecar checkpoint (seq %d, %d lines) is older than this checkpoint (seq %d): the sidecar was replaced by an old copy", c.Seq, c.Lines, w.lastSeq))
		}
	}
	for _, a := range w.anchors {
		if a.cp.LogID == w.fr.LogID && a.cp.Lines > w.n {
			return w.fail(w.n+1, "", ProblemTruncated, fmt.Sprintf("missing: anchor checkpoint seq %d seals %d lines, the file has %d", a.cp.Seq, a.cp.Lines, w.n))
		}
	}
	w.fr.UnsealedLines = w.n - w.fr.SealedThrough
	w.fr.UnsealedRecords = w.fr.Records - w.sealedRecords
	return nil
}

// readLine reads one line into *buf and returns it without its newline;
// complete is false at the end of input (line then holds any partial line).
func readLine(br *bufio.Reader, buf *[]byte) (line []byte, complete bool, err error) {
	b := (*buf)[:0]
	defer func() { *buf = b[:0] }()
	for {
		chunk, err := br.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > MaxLineBytes+1 {
			return nil, false, fmt.Errorf("line longer than %d bytes", MaxLineBytes)
		}
		switch {
		case err == nil:
			return b[:len(b)-1], true, nil
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return b, false, nil
		default:
			return nil, false, err
		}
	}
}
