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

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
)

// Bounds of what Verify reads.
const (
	maxLine       = 32 << 20 // the signature line lists every digest
	maxLines      = MaxRecords + 4
	maxVerifySize = MaxBytes + 64<<20
)

// BadLineError names the first line of an evidence file that does not hold.
type BadLineError struct {
	Line       int    // 1-based
	DecisionID string // when the line is a record
	Problem    string
}

func (e *BadLineError) Error() string {
	where := fmt.Sprintf("line %d", e.Line)
	if e.DecisionID != "" {
		where += " (record " + e.DecisionID + ")"
	}
	return "evidence: " + where + ": " + e.Problem
}

// ErrLogBroken is returned (wrapped, with the log's own bad line) for intact
// evidence whose verification line says the audit log failed verification.
var ErrLogBroken = errors.New("evidence: the audit log it was exported from failed verification")

// Report is what a verified evidence file holds.
type Report struct {
	Header       Header
	Records      int
	Verification Verification
	Coverage     Coverage
	KeyID        string
}

// Verify checks an evidence file against the public key that must have
// signed it: the signature over the line digests, then every line against
// its digest (naming the first that differs), then the content (header,
// records within the range, the coverage recomputed from the records, the
// record count against the verification). It returns a *BadLineError for
// the first line that does not hold, or ErrLogBroken when the file is intact
// but records a failed audit verification.
func Verify(r io.Reader, pub ed25519.PublicKey) (Report, error) {
	var rep Report
	br := bufio.NewReaderSize(r, 256<<10)
	var (
		digests [][32]byte
		ids     []string // decision id per line, for messages
		lag     [][]byte // the last three lines: the trailer, once the file ends
		total   int64
		cv      = newCoverage()
	)
	var contentErr *BadLineError
	fail := func(line int, problem string) {
		if contentErr == nil {
			contentErr = &BadLineError{Line: line, DecisionID: ids[line-1], Problem: problem}
		}
	}
	for {
		line, err := readLine(br)
		if errors.Is(err, io.EOF) {
			break
		}
		n := len(digests) + 1
		if err != nil {
			return rep, &BadLineError{Line: n, Problem: err.Error()}
		}
		if total += int64(len(line)) + 1; total > maxVerifySize || n > maxLines {
			return rep, &BadLineError{Line: n, Problem: "the file is larger than any export"}
		}
		digests = append(digests, sha256.Sum256(line))
		var f struct {
			DecisionID string `json:"decision_id"`
		}
		_ = json.Unmarshal(line, &f)
		ids = append(ids, f.DecisionID)
		if n == 1 {
			ids[0] = ""
			if json.Unmarshal(line, &rep.Header) != nil || rep.Header.Type != TypeHeader || rep.Header.Version != 1 {
				fail(1, "not an evidence header")
			}
			continue
		}
		lag = append(lag, line)
		if len(lag) <= 3 {
			continue
		}
		rec := lag[0]
		lag = lag[1:]
		m := n - 3 // the record's line
		fields, err := cv.add(rec)
		switch {
		case err != nil:
			fail(m, "not a JSON record")
		case !rep.Header.From.IsZero() && fields.TS.Before(rep.Header.From), !rep.Header.To.IsZero() && !fields.TS.Before(rep.Header.To):
			fail(m, "the record's ts is outside the exported range")
		}
	}
	n := len(digests)
	if n < 4 || len(lag) != 3 {
		return rep, &BadLineError{Line: n, Problem: fmt.Sprintf("%d lines: an evidence file has a header, records and three closing lines", n)}
	}
	for i := range 3 {
		ids[n-3+i] = ""
	}

	// The signature, then each line against its digest.
	var sig Signature
	if err := json.Unmarshal(lag[2], &sig); err != nil || sig.Type != TypeSignature || sig.Alg != "Ed25519" {
		return rep, &BadLineError{Line: n, Problem: "not an Ed25519 signature line: the file was cut or the line changed"}
	}
	rep.KeyID = sig.KeyID
	if want := audit.KeyID(pub); sig.KeyID != want {
		return rep, &BadLineError{Line: n, Problem: fmt.Sprintf("signed by key %s, not by the key given (%s)", sig.KeyID, want)}
	}
	signed := make([][32]byte, len(sig.Digests))
	for i, d := range sig.Digests {
		if b, err := hex.DecodeString(d); err != nil || len(b) != 32 || copy(signed[i][:], b) != 32 {
			return rep, &BadLineError{Line: n, Problem: "the signature line's digests are malformed"}
		}
	}
	if sig.Lines != len(signed) || !ed25519.Verify(pub, signedMessage(sig.KeyID, signed), sig.Sig) {
		return rep, &BadLineError{Line: n, Problem: "the signature does not verify: the signature line was changed"}
	}
	for i := range max(n-1, len(signed)) {
		switch {
		case i >= n-1:
			return rep, &BadLineError{Line: n, Problem: fmt.Sprintf("the signature covers %d lines, the file has %d before it: lines were deleted", len(signed), n-1)}
		case i >= len(signed):
			return rep, &BadLineError{Line: i + 1, Problem: fmt.Sprintf("the signature covers %d lines: this line was added", len(signed))}
		case digests[i] != signed[i]:
			return rep, &BadLineError{Line: i + 1, DecisionID: ids[i], Problem: "the line differs from what was signed: it was changed, added or moved"}
		}
	}

	// The content.
	if contentErr != nil {
		return rep, contentErr
	}
	rep.Records = cv.c.Records
	if json.Unmarshal(lag[0], &rep.Verification) != nil || rep.Verification.Type != TypeVerification {
		return rep, &BadLineError{Line: n - 2, Problem: "not the verification line"}
	}
	if json.Unmarshal(lag[1], &rep.Coverage) != nil || rep.Coverage.Type != TypeCoverage {
		return rep, &BadLineError{Line: n - 1, Problem: "not the coverage line"}
	}
	want, _ := json.Marshal(cv.result())
	if got, _ := json.Marshal(rep.Coverage); !bytes.Equal(got, want) {
		return rep, &BadLineError{Line: n - 1, Problem: "the coverage does not match the records"}
	}
	v := rep.Verification
	if v.OK && v.Result.Selected != rep.Records {
		return rep, &BadLineError{Line: n - 2, Problem: fmt.Sprintf("the verification selected %d records, the file holds %d", v.Result.Selected, rep.Records)}
	}
	if !v.OK {
		if v.Error != nil {
			return rep, fmt.Errorf("%w: %v", ErrLogBroken, v.Error)
		}
		return rep, fmt.Errorf("%w: %s", ErrLogBroken, v.Failure)
	}
	return rep, nil
}

// readLine reads one line without its newline; a last line without one is
// an error (the file was cut).
func readLine(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		chunk, err := br.ReadSlice('\n')
		out = append(out, chunk...)
		if len(out) > maxLine+1 {
			return nil, fmt.Errorf("a line longer than %d bytes", maxLine)
		}
		switch {
		case err == nil:
			return out[:len(out)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			if len(out) == 0 {
				return nil, io.EOF
			}
			return nil, errors.New("the last line has no newline: the file was cut")
		default:
			return nil, err
		}
	}
}
