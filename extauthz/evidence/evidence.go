// Package evidence owns the evidence export (AISecOps v1.0 section 27, DESIGN
// §7): one signed file holding the audit records of a time range as the log
// holds them, the chain and checkpoint verification of the files they came
// from, and the coverage of the specification's section 16 control matrix;
// and its verification.
//
// The file is JSON Lines:
//
//	line 1        {"type":"aisecops_evidence", "version":1, range, files, signing key id}
//	lines 2..n-3  the selected audit record lines, byte for byte
//	line n-2      {"type":"verification", "ok", "result", "error"}
//	line n-1      {"type":"coverage", "controls":[…], …}
//	line n        {"type":"signature", "alg":"Ed25519", "key_id", "lines", "digests", "sig"}
//
// The signature covers the SHA-256 of every line before it, listed in the
// signature line, so a verifier names the first line that changed, not just
// that something did. It is made with the audit log's checkpoint signing key
// (audit-signing-key.pem), under its own domain text: the one public key
// verifies both the log's checkpoints and its evidence, and neither
// signature can pass for the other.
//
// The package writes nothing but the export: it never decides, and it never
// holds a clear argument value (records are copied as the log has them, with
// their values sealed) or a key it did not get.
package evidence

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
)

// Bounds of one export.
const (
	MaxRecords = 100000
	MaxBytes   = 512 << 20
	// maxExamples bounds the example decision ids per control.
	maxExamples = 5
)

// Line types.
const (
	TypeHeader       = "aisecops_evidence"
	TypeVerification = "verification"
	TypeCoverage     = "coverage"
	TypeSignature    = "signature"
)

// signDomain prefixes what the signature covers (never a checkpoint's text).
const signDomain = "aisecops-evidence-v1\n"

// Header is the first line.
type Header struct {
	Type         string    `json:"type"`
	Version      int       `json:"version"`
	GeneratedAt  time.Time `json:"generated_at"`
	From         time.Time `json:"from,omitzero"`
	To           time.Time `json:"to,omitzero"`
	Files        []string  `json:"files"`
	Spec         string    `json:"spec"`
	SigningKeyID string    `json:"signing_key_id"`
}

// Verification is the audit log's verification result, as audit.VerifyFiles
// gave it (file names without their directories).
type Verification struct {
	Type   string             `json:"type"`
	OK     bool               `json:"ok"`
	Result audit.VerifyResult `json:"result"`
	Error  *audit.VerifyError `json:"error,omitempty"`
	// Failure is an error that is not a VerifyError (a file that could not be read).
	Failure string `json:"failure,omitempty"`
}

// ControlCoverage is how often a control appeared in the records' control_ids.
type ControlCoverage struct {
	Control
	Count    int      `json:"count"`
	Examples []string `json:"examples"` // decision ids, first ones seen
}

// Coverage is the section 16 coverage of the exported records.
type Coverage struct {
	Type               string            `json:"type"`
	Spec               string            `json:"spec"`
	Records            int               `json:"records"`
	Controls           []ControlCoverage `json:"controls"`
	Exercised          int               `json:"exercised"`           // controls with a count
	MandatoryExercised int               `json:"mandatory_exercised"` // of the MUST controls
	Mandatory          int               `json:"mandatory"`
	// Unknown counts control ids the records carry that the matrix lacks.
	Unknown map[string]int `json:"unknown_control_ids"`
}

// Signature is the last line.
type Signature struct {
	Type    string   `json:"type"`
	Alg     string   `json:"alg"`
	KeyID   string   `json:"key_id"`
	Lines   int      `json:"lines"`   // lines before this one
	Digests []string `json:"digests"` // SHA-256 of each, hex, in order
	Sig     []byte   `json:"sig"`
}

// specName names the matrix the coverage is of.
const specName = "AISecOps v1.0 section 16"

// coverage accumulates control counts from record lines.
type coverage struct{ c Coverage }

func newCoverage() *coverage {
	cv := &coverage{c: Coverage{Type: TypeCoverage, Spec: specName, Unknown: map[string]int{}}}
	for _, c := range Controls() {
		cv.c.Controls = append(cv.c.Controls, ControlCoverage{Control: c, Examples: []string{}})
		if c.Mandatory == "MUST" {
			cv.c.Mandatory++
		}
	}
	return cv
}

// recordFields are what coverage reads of a record line.
type recordFields struct {
	TS         time.Time `json:"ts"`
	DecisionID string    `json:"decision_id"`
	ControlIDs []string  `json:"control_ids"`
}

func (cv *coverage) add(line []byte) (recordFields, error) {
	var r recordFields
	if err := json.Unmarshal(line, &r); err != nil {
		return r, err
	}
	cv.c.Records++
	seen := map[string]bool{}
	for _, id := range r.ControlIDs {
		if seen[id] {
			continue
		}
		seen[id] = true
		i := slices.IndexFunc(cv.c.Controls, func(c ControlCoverage) bool { return c.ID == id })
		if i < 0 {
			if len(cv.c.Unknown) < 64 || cv.c.Unknown[id] > 0 {
				cv.c.Unknown[id]++
			}
			continue
		}
		c := &cv.c.Controls[i]
		c.Count++
		if len(c.Examples) < maxExamples && r.DecisionID != "" {
			c.Examples = append(c.Examples, r.DecisionID)
		}
	}
	return r, nil
}

func (cv *coverage) result() Coverage {
	out := cv.c
	out.Exercised, out.MandatoryExercised = 0, 0
	for _, c := range out.Controls {
		if c.Count > 0 {
			out.Exercised++
			if c.Mandatory == "MUST" {
				out.MandatoryExercised++
			}
		}
	}
	return out
}

// Options configure an export.
type Options struct {
	// Files are the audit log's files, oldest first (audit.Files).
	Files []string
	// Keys verify the chain (its key) and its checkpoints.
	Keys audit.VerifyKeys
	// Signer signs the export: the log's checkpoint signing key.
	Signer ed25519.PrivateKey
	// From and To select records by ts, [From, To); zero is unbounded.
	From, To time.Time
	Now      time.Time
	// MaxRecords and MaxBytes bound the export (defaults: the package's).
	MaxRecords int
	MaxBytes   int64
}

// ErrTooLarge is returned, before anything is written, when the range holds
// more records or bytes than the bounds.
var ErrTooLarge = errors.New("evidence: the range holds more than one export may")

// Summary is what an export wrote.
type Summary struct {
	Records  int
	Verified bool
	Coverage Coverage
}

// Export verifies the files, then writes the evidence file for the range to
// w. It reads the files twice: once to count what the range holds (an export
// over the bounds fails with ErrTooLarge before writing a byte), once to
// write it. A log that fails verification is still exported, up to its first
// bad line, with the failure in the verification line: that is evidence too.
func Export(w io.Writer, opts Options) (Summary, error) {
	if len(opts.Signer) != ed25519.PrivateKeySize {
		return Summary{}, errors.New("evidence: no signing key")
	}
	if opts.MaxRecords <= 0 {
		opts.MaxRecords = MaxRecords
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = MaxBytes
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	var n int
	var size int64
	vo := audit.VerifyOptions{Keys: opts.Keys, From: opts.From, To: opts.To, Visit: func(e audit.Entry) error {
		n++
		size += int64(len(e.Raw)) + 1
		if n > opts.MaxRecords || size > opts.MaxBytes {
			return ErrTooLarge
		}
		return nil
	}}
	if _, err := audit.VerifyFiles(opts.Files, vo); errors.Is(err, ErrTooLarge) {
		return Summary{}, fmt.Errorf("%w: more than %d records or %d MiB; narrow from/to", ErrTooLarge, opts.MaxRecords, opts.MaxBytes>>20)
	}

	sw := &signedWriter{w: bufio.NewWriterSize(w, 256<<10)}
	pub := opts.Signer.Public().(ed25519.PublicKey)
	h := Header{Type: TypeHeader, Version: 1, GeneratedAt: opts.Now.UTC(), From: opts.From.UTC(), To: opts.To.UTC(), Spec: specName, SigningKeyID: audit.KeyID(pub)}
	for _, f := range opts.Files {
		h.Files = append(h.Files, filepath.Base(f))
	}
	if err := sw.json(h); err != nil {
		return Summary{}, err
	}
	cv := newCoverage()
	written := 0
	vo.Visit = func(e audit.Entry) error {
		if written++; written > opts.MaxRecords {
			return ErrTooLarge // the log grew between the passes
		}
		if _, err := cv.add(e.Raw); err != nil {
			return fmt.Errorf("evidence: %s line %d: %w", filepath.Base(e.File), e.Line, err)
		}
		return sw.line(e.Raw)
	}
	res, verr := audit.VerifyFiles(opts.Files, vo)
	var ve *audit.VerifyError
	v := Verification{Type: TypeVerification, OK: verr == nil, Result: res}
	switch {
	case verr == nil:
	case errors.As(verr, &ve):
		c := *ve
		c.File = filepath.Base(c.File)
		v.Error = &c
	case errors.Is(verr, ErrTooLarge) || sw.err != nil:
		return Summary{}, errors.Join(verr, sw.err)
	default:
		v.Failure = verr.Error()
	}
	// File names only: where the server keeps its log is none of the file's business.
	for i := range v.Result.Files {
		fr := &v.Result.Files[i]
		for _, f := range opts.Files {
			fr.SealedBy = strings.ReplaceAll(fr.SealedBy, f, filepath.Base(f))
		}
		fr.Path = filepath.Base(fr.Path)
	}
	for _, p := range []*audit.Position{v.Result.FirstSelected, v.Result.LastSelected} {
		if p != nil {
			p.File = filepath.Base(p.File)
		}
	}
	cov := cv.result()
	if err := errors.Join(sw.json(v), sw.json(cov)); err != nil {
		return Summary{}, err
	}
	sig := Signature{Type: TypeSignature, Alg: "Ed25519", KeyID: audit.KeyID(pub), Lines: len(sw.digests), Digests: make([]string, len(sw.digests))}
	for i, d := range sw.digests {
		sig.Digests[i] = hex.EncodeToString(d[:])
	}
	sig.Sig = ed25519.Sign(opts.Signer, signedMessage(sig.KeyID, sw.digests))
	b, err := json.Marshal(sig)
	if err != nil {
		return Summary{}, err
	}
	if _, err := sw.w.Write(append(b, '\n')); err != nil {
		return Summary{}, err
	}
	if err := sw.w.Flush(); err != nil {
		return Summary{}, err
	}
	return Summary{Records: cov.Records, Verified: v.OK, Coverage: cov}, nil
}

// signedMessage is what the signature covers: the domain, the key id, the
// line count and the SHA-256 of the lines' digests in order.
func signedMessage(keyID string, digests [][32]byte) []byte {
	h := sha256.New()
	for _, d := range digests {
		h.Write(d[:])
	}
	return fmt.Appendf(nil, "%skey_id=%s\nlines=%d\ndigests_sha256=%x\n", signDomain, keyID, len(digests), h.Sum(nil))
}

// signedWriter writes lines and keeps each line's digest.
type signedWriter struct {
	w       *bufio.Writer
	digests [][32]byte
	err     error
}

func (s *signedWriter) line(b []byte) error {
	if s.err != nil {
		return s.err
	}
	if bytes.IndexByte(b, '\n') >= 0 {
		s.err = errors.New("evidence: a line holds a newline")
		return s.err
	}
	s.digests = append(s.digests, sha256.Sum256(b))
	if _, err := s.w.Write(b); err != nil {
		s.err = err
		return err
	}
	if err := s.w.WriteByte('\n'); err != nil {
		s.err = err
	}
	return s.err
}

func (s *signedWriter) json(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.line(b)
}
