// Package audit owns the tamper-evident decision log (AIS-OBS-01, DESIGN §7):
// one JSON line per Check, plus the events that change what a Check means
// (approvals, revocations, policy and route versions), in one keyed chain;
// and the Sealer that keeps clear argument values out of it.
//
// The chain. Every line ends with "prev_hash" (the previous line's hash) and
// "hash": HMAC-SHA256, under the deployment's chain key, of the line up to its
// hash field. The first line of a file is a header ("event":"log_opened") that
// names the log (a random log id, and the previous file's log id, line count
// and head when the file continues a rotated one); its prev_hash is a keyed
// genesis value derived from those names. Without the key nobody can write a
// line that verifies, so an edited, inserted, moved or rebuilt line is found,
// and named.
//
// Checkpoints. A checkpoint is signed with Ed25519 over (seq, log id, line
// count, byte offset, head, time). After every write batch the Log writes one
// into a sidecar file next to the log (FILE.checkpoint: two fixed slots, the
// higher valid seq wins), and every CheckpointEvery lines, at rotation and at
// Close it copies the latest one into the log as a line of its own
// ("event":"checkpoint"). Deleting the last lines, truncating the file or
// putting back an older sidecar therefore fails verification; a copy of the
// log without its sidecar verifies up to its last checkpoint line, and the
// records after it are reported unsealed.
//
// Rotation (Rotate, Options.MaxBytes) ends a file with a checkpoint line and
// renames it PATH.<UTC time>; the new file's header links to the old file's
// last line, so VerifyFiles checks the files as one chain.
//
// Writes are group-committed: concurrent Write calls share one write syscall,
// one fsync (Options.Fsync) and one sidecar checkpoint, and each returns when
// its own line is as durable as configured. A Write that fails left nothing in
// the file; the caller must deny.
//
// Keys. The chain key (audit-key, 32 random bytes) and the signing key
// (audit-signing-key.pem) are created, mode 0600, next to a new log unless
// Options names them ($AISECOPS_HOME for the default log). Whoever holds the
// chain key can write lines that verify, but cannot make the signed
// checkpoints agree with them; whoever holds both can rewrite the log. A log
// and its sidecar rolled back together to an earlier state verify on the
// host: only a checkpoint kept elsewhere (VerifyOptions.Anchors) catches that.
//
// The package must not decide anything (a failed Write is the caller's
// deny), never holds a token, a raw argument value or a matched secret (only
// hashes, findings and sealed values), and never logs or prints a key.
package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/finding"
)

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

	// EventCheckpoint is written by the Log itself: a signed checkpoint
	// sealing every line before it. Callers cannot write it.
	EventCheckpoint = "checkpoint"
	// EventLogOpened is written by the Log itself as the first line of every
	// file. Callers cannot write it.
	EventLogOpened = "log_opened"
)

// StepRisk is the step's risk factors.
type StepRisk struct {
	RStep float64 `json:"r_step"`
	E     float64 `json:"e"`
	T     float64 `json:"t"`
	B     float64 `json:"b"`
	Step  float64 `json:"step"`
}

// PolicyDecision is the policy's own decision on a record's Input.
type PolicyDecision struct {
	Decision string   `json:"decision"`
	Reasons  []string `json:"reasons"` // codes, in the policy's order
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
// queries the log, so renaming one is a breaking change. PrevHash and Hash
// must stay the last two fields: the Log fills them into the encoded line in
// place.
type Record struct {
	TS                time.Time          `json:"ts"`
	DecisionID        string             `json:"decision_id"`
	Event             string             `json:"event,omitempty"` // not a Check: one of the Event constants, "token_issued", "token_refused"
	RequestID         string             `json:"request_id,omitempty"`
	RunID             string             `json:"run_id"`
	TraceID           string             `json:"trace_id"`
	OTelTraceID       string             `json:"otel_trace_id,omitempty"` // W3C trace id of the Check's span or the agent's traceparent
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
	LinkedRuns        []string           `json:"linked_runs,omitempty"` // "<agent>@<run>" whose risk counts in this step's (cross-agent chains)
	BudgetConsumption map[string]float64 `json:"budget_consumption"`
	EgressFindings    []finding.Finding  `json:"egress_findings"`
	TokenJTI          string             `json:"token_jti"`
	PolicyVersion     string             `json:"policy_version"`
	RouteVersion      string             `json:"route_version"`
	DryRun            bool               `json:"dry_run"`
	Explain           bool               `json:"explain,omitempty"`
	ApprovalID        string             `json:"approval_id,omitempty"`
	Committed         bool               `json:"committed"`
	// RunCalls is the run's tool calls after this step as the store counted
	// them (committed) or as the step was decided on (not committed): the
	// order of a run's steps whichever replica decided them.
	RunCalls  int64 `json:"run_calls,omitempty"`
	LatencyUS int64 `json:"latency_us"`

	// Events (see the Event constants).
	DecidedBy string            `json:"decided_by,omitempty"`
	Why       string            `json:"why,omitempty"`
	Detail    map[string]string `json:"detail,omitempty"`

	// Replay. Input is the policy input the decision was taken on, in the
	// open except for what the agent wrote: the call's arguments are null
	// and its agent-written strings (ids, provenance) are as the record shows
	// them (redacted when they carry a secret). Sealed holds those values in
	// clear, encrypted (Sealer, aad = decision id): {"arguments": …,
	// "strings": {"<input path>": …}}. Policy is what the policy decided on
	// that input, which a replay under the same bundle reproduces (a later
	// stage may have changed Decision). Absent when a stage before the policy
	// decided, or with no Sealer. Write puts a compact one-line object in
	// the line as it is (see compactObject): it must be valid JSON, as
	// json.Marshal's output is.
	Input  json.RawMessage `json:"input,omitempty"`
	Sealed *Sealed         `json:"sealed,omitempty"`
	Policy *PolicyDecision `json:"policy,omitempty"`

	PrevHash string `json:"prev_hash"` // the previous line's Hash; set by Write
	Hash     string `json:"hash"`      // this line's chain value; set by Write
}

// Sink receives audit records. A Write that returns an error means the record
// was not durably appended; the caller must deny.
type Sink interface {
	Write(r *Record) error
}

// isControl reports the events only the Log writes.
func isControl(event string) bool { return event == EventCheckpoint || event == EventLogOpened }

// ReadAll parses the records of a log (the run timeline, replay, tests),
// skipping the Log's own header and checkpoint lines. It does not verify the
// chain: use Verify for that.
func ReadAll(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes+1)
	for n := 1; sc.Scan(); n++ {
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return out, fmt.Errorf("audit: line %d: %w", n, err)
		}
		if !isControl(rec.Event) {
			out = append(out, rec)
		}
	}
	return out, sc.Err()
}
