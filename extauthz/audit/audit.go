// Package audit owns the tamper-evident decision log: exactly one JSON line per
// Check, each carrying the SHA-256 of the line before it, so an edit,
// a deletion or a reordering breaks the chain that Verify walks. It never holds
// a token, a raw argument value or a matched secret: only hashes and findings.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/finding"
)

// Genesis is the prev_hash of a log's first line.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// StepRisk is the step's risk factors.
type StepRisk struct {
	RStep float64 `json:"r_step"`
	E     float64 `json:"e"`
	T     float64 `json:"t"`
	B     float64 `json:"b"`
	Step  float64 `json:"step"`
}

// Reason is one reason of the decision.
type Reason struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	ControlID string `json:"control_id,omitempty"`
}

// Provenance is one context provenance label.
type Provenance struct {
	SourceType string `json:"source_type"`
	SourceName string `json:"source_name"`
	TrustLevel string `json:"trust_level"`
	SourceHash string `json:"source_hash,omitempty"`
}

// Record is one audit line. Its field names are read by whatever ships and
// queries the log, so renaming one is a breaking change.
type Record struct {
	TS                time.Time          `json:"ts"`
	DecisionID        string             `json:"decision_id"`
	Event             string             `json:"event,omitempty"` // not a Check: "token_issued", "token_refused"
	RequestID         string             `json:"request_id,omitempty"`
	RunID             string             `json:"run_id"`
	TraceID           string             `json:"trace_id"`
	AgentID           string             `json:"agent_id"`
	Tool              string             `json:"tool"`
	ToolClass         string             `json:"tool_class"`
	MCPMethod         string             `json:"mcp_method,omitempty"`
	ArgumentsHash     string             `json:"arguments_hash"`
	RequestDigest     string             `json:"request_digest,omitempty"` // method, normalised path, query, body
	Binding           string             `json:"binding,omitempty"`        // agent, tool, run, request digest: what an approval binds to
	PromptHash        string             `json:"prompt_hash"`
	ContextProvenance []Provenance       `json:"context_provenance"`
	Decision          string             `json:"decision"`
	HTTPStatus        int                `json:"http_status"`
	Reasons           []Reason           `json:"reasons"`
	ControlIDs        []string           `json:"control_ids"`
	StepRisk          StepRisk           `json:"step_risk"`
	CumulativeRisk    float64            `json:"cumulative_risk"`
	BudgetConsumption map[string]float64 `json:"budget_consumption"`
	EgressFindings    []finding.Finding  `json:"egress_findings"`
	TokenJTI          string             `json:"token_jti"`
	PolicyVersion     string             `json:"policy_version"`
	RouteVersion      string             `json:"route_version"`
	DryRun            bool               `json:"dry_run"`
	Explain           bool               `json:"explain,omitempty"`
	ApprovalID        string             `json:"approval_id,omitempty"`
	Committed         bool               `json:"committed"`
	LatencyUS         int64              `json:"latency_us"`

	// Events (see the Event constants).
	DecidedBy string            `json:"decided_by,omitempty"`
	Why       string            `json:"why,omitempty"`
	Detail    map[string]string `json:"detail,omitempty"`

	// Replay: the policy input with argument and body values replaced by
	// references into Sealed, which holds them encrypted (Sealer).
	Input  json.RawMessage `json:"input,omitempty"`
	Sealed *Sealed         `json:"sealed,omitempty"`

	PrevHash string `json:"prev_hash"`
}

// Events that are not Checks, each a Record of its own in the same chain
// (Record.Event; a Check has none). Fields a Check does not use are omitted
// from its line.
const (
	// EventApprovalDecided: an approver approved or rejected a held call.
	// ApprovalID, Decision ("approve" or "reject"), DecidedBy (the
	// credential's subject), Why (the approver's text), and the RunID, AgentID,
	// Tool and Binding of the call it decides.
	EventApprovalDecided = "approval_decided"
	// EventRevocation: a token or an agent was revoked. DecidedBy, Why, and
	// Detail {"jti": …} or {"agent_id": …, "before": RFC 3339}, plus
	// {"until": RFC 3339} when the entry expires.
	EventRevocation = "revocation"
	// EventPolicyVersionChanged: a new policy bundle took effect.
	// PolicyVersion is the new version, Detail {"from": the old one}.
	EventPolicyVersionChanged = "policy_version_changed"
	// EventRoutesVersionChanged: a new route table took effect. RouteVersion
	// is the new version, Detail {"from": the old one}.
	EventRoutesVersionChanged = "routes_version_changed"
)

// Sink receives audit records. A Write that returns an error means the record
// was not durably appended; the caller must deny.
type Sink interface {
	Write(r *Record) error
}

// Options tune a Log.
type Options struct {
	// Fsync makes every line durable against power loss (fsync per line). Without
	// it a line survives a process crash but not a machine crash.
	Fsync bool
}

// Log is an append-only JSONL file with a hash chain. Safe for concurrent use.
type Log struct {
	mu   sync.Mutex
	f    *os.File
	size int64
	prev string
	opts Options
	buf  bytes.Buffer
}

var _ Sink = (*Log)(nil)

// Open opens or creates path for appending. A torn last line (a crash
// mid-write) is cut off so the log stays parseable and the chain continues from
// the last complete line.
func Open(path string, opts Options) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	prev, size, err := tail(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: read %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: repair %s: %w", path, err)
	}
	return &Log{f: f, size: size, prev: prev, opts: opts}, nil
}

// tail returns the hash of the last complete line and the offset just past it.
func tail(f *os.File) (prev string, size int64, err error) {
	prev = Genesis
	r := bufio.NewReaderSize(f, 64<<10)
	var off int64
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			return prev, off, nil // a partial line without '\n' is dropped
		}
		if err != nil {
			return "", 0, err
		}
		off += int64(len(line))
		prev = LineHash(line[:len(line)-1])
	}
}

// LineHash is the chain hash of one line (without its newline).
func LineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// Write appends r, setting r.PrevHash. On error nothing is appended: a partly
// written line is truncated away so the chain stays intact.
func (l *Log) Write(r *Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("audit: log closed")
	}
	r.PrevHash = l.prev
	l.buf.Reset()
	enc := json.NewEncoder(&l.buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil { // Encode appends the '\n'
		return fmt.Errorf("audit: encode: %w", err)
	}
	line := l.buf.Bytes()
	n, err := l.f.WriteAt(line, l.size)
	if err == nil && l.opts.Fsync {
		err = l.f.Sync()
	}
	if err != nil {
		if n > 0 {
			_ = l.f.Truncate(l.size)
		}
		return fmt.Errorf("audit: write: %w", err)
	}
	l.size += int64(n)
	l.prev = LineHash(line[:len(line)-1])
	return nil
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// VerifyResult summarises a chain walk.
type VerifyResult struct {
	Lines    int    `json:"lines"`
	LastHash string `json:"last_hash"`
}

// Verify walks a log and checks that every line is a JSON record whose
// prev_hash is the hash of the line before it. It stops at the first break,
// naming the line (1-based).
func Verify(r io.Reader) (VerifyResult, error) {
	res := VerifyResult{LastHash: Genesis}
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			if len(line) > 0 {
				return res, fmt.Errorf("line %d: incomplete (no newline)", res.Lines+1)
			}
			return res, nil
		}
		if err != nil {
			return res, err
		}
		line = line[:len(line)-1]
		var rec struct {
			PrevHash   *string `json:"prev_hash"`
			DecisionID string  `json:"decision_id"`
		}
		if err := json.Unmarshal(line, &rec); err != nil {
			return res, fmt.Errorf("line %d: not a JSON record: %w", res.Lines+1, err)
		}
		if rec.PrevHash == nil || *rec.PrevHash != res.LastHash {
			return res, fmt.Errorf("line %d (decision %s): prev_hash does not match the line before: the log was altered", res.Lines+1, rec.DecisionID)
		}
		res.Lines++
		res.LastHash = LineHash(line)
	}
}

// VerifyFile verifies the log at path.
func VerifyFile(path string) (VerifyResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return VerifyResult{}, err
	}
	defer f.Close()
	return Verify(f)
}

// ReadAll parses every record of a log (used by the run timeline and tests).
func ReadAll(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return out, fmt.Errorf("audit: line %d: %w", len(out)+1, err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}
