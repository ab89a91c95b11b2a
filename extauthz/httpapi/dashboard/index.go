package dashboard

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
)

// Index is what the overview and the maturity evaluation read: the audit
// log's records, kept in memory as compact events (codes and numbers, never
// an argument value), fed by tailing the audit file. It reads only what was
// appended since its last read, picks up a rotated file from its start, and
// forgets events older than Retention or beyond MaxEvents.
type Index struct {
	path string
	opts IndexOptions

	mu     sync.RWMutex
	off    int64
	ino    uint64
	strs   interner
	events []event
	// requested is when each approval was asked for (its id → the Check's
	// time), to measure time to decision when the decision arrives.
	requested map[string]int64
	// held is what the audit record says of each call held for approval,
	// by decision id: what an approver sees beside the approval.
	held      map[string]HeldCall
	decided   []decidedApproval
	versions  []VersionChange
	lastPol   string
	lastRoute string
	// toolRoutes is each tool's last route version seen on a Check.
	toolRoutes map[string]string
	records    int64 // lines read, all kinds
	bad        int64 // lines that did not parse
}

// IndexOptions bound the index.
type IndexOptions struct {
	Retention time.Duration // default 31 days (the longest overview window)
	MaxEvents int           // default 2,000,000 (~100 bytes each)
	// MaxInitialRead is how much of an existing file is read at start, from
	// its end (default 256 MiB).
	MaxInitialRead int64
	Clock          func() time.Time // for the retention (default time.Now)
}

func (o IndexOptions) withDefaults() IndexOptions {
	if o.Retention <= 0 {
		o.Retention = 31 * 24 * time.Hour
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = 2_000_000
	}
	if o.MaxInitialRead <= 0 {
		o.MaxInitialRead = 256 << 20
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	return o
}

// VersionChange is one policy or routes version taking effect.
type VersionChange struct {
	TS      time.Time `json:"ts"`
	Kind    string    `json:"kind"` // "policy", "routes" (a reload event) or "route <tool>"
	Version string    `json:"version"`
	From    string    `json:"from,omitempty"`
	// Source says where the change was seen: the service's own event record
	// ("event"), or the first Check decided under the new version ("check").
	Source string `json:"source"`
}

type decidedApproval struct {
	id   string
	ts   int64
	wait time.Duration
	ok   bool // approved
}

// Event flags.
const (
	fEscalated   uint16 = 1 << iota // E > 1
	fInjection                      // injection reasons
	fEgress                         // egress findings or egress reasons
	fBudget                         // budget_exceeded
	fFault                          // a fault decided it, not policy
	fTraced                         // carries a trace id and an explicit run id
	fUntrusted                      // untrusted provenance label
	fTokenJTI                       // carried a verified token
	fPolicyDeny                     // denied by a policy reason
	fHalt                           // risk_halt
	fMCPProtocol                    // MCP protocol traffic: not a step
)

// event is one Check as the index keeps it.
type event struct {
	ts       int64 // unix nanoseconds
	run      uint32
	agent    uint32
	tool     uint32
	decision uint32
	reasons  []uint32
	controls []uint32
	dets     []uint32 // egress finding detectors
	step     float32
	cum      float32
	flags    uint16
}

// interner maps strings to small numbers, so events hold no strings.
type interner struct {
	ids  map[string]uint32
	strs []string
}

func (in *interner) id(s string) uint32 {
	if id, ok := in.ids[s]; ok {
		return id
	}
	if in.ids == nil {
		in.ids = map[string]uint32{}
	}
	id := uint32(len(in.strs))
	in.ids[s] = id
	in.strs = append(in.strs, s)
	return id
}

func (in *interner) str(id uint32) string { return in.strs[id] }

// NewIndex indexes the audit log at path (which may not exist yet).
func NewIndex(path string, o IndexOptions) *Index {
	return &Index{path: path, opts: o.withDefaults(), requested: map[string]int64{}, held: map[string]HeldCall{}, toolRoutes: map[string]string{}}
}

// line is the part of an audit record the index reads.
type line struct {
	TS          time.Time `json:"ts"`
	DecisionID  string    `json:"decision_id"`
	Event       string    `json:"event"`
	RunID       string    `json:"run_id"`
	TraceID     string    `json:"trace_id"`
	OTelTraceID string    `json:"otel_trace_id"`
	AgentID     string    `json:"agent_id"`
	Tool        string    `json:"tool"`
	MCPMethod   string    `json:"mcp_method"`
	Decision    string    `json:"decision"`
	Reasons     []struct {
		Code string `json:"code"`
	} `json:"reasons"`
	ControlIDs     []string           `json:"control_ids"`
	StepRisk       audit.StepRisk     `json:"step_risk"`
	CumulativeRisk float64            `json:"cumulative_risk"`
	EgressFindings []HeldFinding      `json:"egress_findings"`
	Provenance     []audit.Provenance `json:"context_provenance"`
	TokenJTI       string             `json:"token_jti"`
	PolicyVersion  string             `json:"policy_version"`
	RouteVersion   string             `json:"route_version"`
	DryRun         bool               `json:"dry_run"`
	Explain        bool               `json:"explain"`
	ApprovalID     string             `json:"approval_id"`
	Detail         map[string]string  `json:"detail"`
}

// Refresh reads what was appended to the file since the last call. A file
// that shrank or was replaced (rotation) is read from its start.
func (x *Index) Refresh() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	f, err := os.Open(x.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	if ino != x.ino || fi.Size() < x.off {
		x.ino, x.off = ino, 0
		if fi.Size() > x.opts.MaxInitialRead {
			x.off = fi.Size() - x.opts.MaxInitialRead
		}
	}
	if fi.Size() == x.off {
		return nil
	}
	if _, err := f.Seek(x.off, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReaderSize(f, 256<<10)
	first := x.off > 0 && x.events == nil && x.records == 0
	var long []byte // a line longer than the reader's buffer, gathered
	for {
		b, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Records with sealed bodies can be long (up to audit.MaxLineBytes):
			// gather them; anything longer is not a record and is skipped.
			if len(long) <= audit.MaxLineBytes {
				long = append(long, b...)
			}
			continue
		}
		if err != nil {
			break // EOF: a partial last line waits for its end
		}
		n := int64(len(long) + len(b))
		if long != nil {
			b = append(long, b...)
			long = nil
		}
		x.off += n
		if first {
			first = false // started mid-file: the first line is a fragment
			continue
		}
		if len(b) > audit.MaxLineBytes+1 {
			x.bad++
			continue
		}
		x.add(bytes.TrimSpace(b))
	}
	x.trim(x.opts.Clock())
	return nil
}

// Add indexes one audit record line (tests and benchmarks feed records
// directly).
func (x *Index) Add(b []byte) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.add(b)
}

func (x *Index) add(b []byte) {
	if len(b) == 0 {
		return
	}
	l, err := parseLine(b)
	if err != nil {
		x.bad++
		return
	}
	x.records++
	ts := l.TS.UnixNano()
	switch l.Event {
	case "":
	case audit.EventApprovalDecided:
		if at, ok := x.requested[l.ApprovalID]; ok {
			x.decided = append(x.decided, decidedApproval{id: l.ApprovalID, ts: ts, wait: time.Duration(ts - at), ok: l.Decision == "approve"})
			delete(x.requested, l.ApprovalID)
		}
		return
	case audit.EventPolicyVersionChanged:
		x.version(l.TS, "policy", l.PolicyVersion, l.Detail["from"], "event")
		return
	case audit.EventRoutesVersionChanged:
		x.version(l.TS, "routes", l.RouteVersion, l.Detail["from"], "event")
		return
	default:
		return // tokens issued, revocations, the log's own lines
	}
	if l.DryRun || l.Explain {
		return // decided, never executed: not a step of any run
	}
	if l.PolicyVersion != "" && l.PolicyVersion != x.lastPol {
		x.version(l.TS, "policy", l.PolicyVersion, x.lastPol, "check")
	}
	// A Check's route_version is its tool's route: a change of it is a
	// reload that changed that tool (its first sighting is not a change).
	if prev, seen := x.toolRoutes[l.Tool]; l.RouteVersion != "" && prev != l.RouteVersion {
		if len(x.toolRoutes) < maxTools {
			x.toolRoutes[l.Tool] = l.RouteVersion
		}
		if seen {
			x.appendVersion(VersionChange{TS: l.TS.UTC(), Kind: "route " + l.Tool, Version: l.RouteVersion, From: prev, Source: "check"})
		}
	}
	e := event{ts: ts, run: x.strs.id(l.AgentID + "\x00" + l.RunID), agent: x.strs.id(l.AgentID), tool: x.strs.id(l.Tool),
		decision: x.strs.id(l.Decision), step: float32(l.StepRisk.Step), cum: float32(l.CumulativeRisk)}
	if l.MCPMethod != "" && l.MCPMethod != "tools/call" {
		e.flags |= fMCPProtocol
	}
	if l.StepRisk.E > 1 {
		e.flags |= fEscalated
	}
	if len(l.EgressFindings) > 0 {
		e.flags |= fEgress
	}
	for _, f := range l.EgressFindings {
		e.dets = append(e.dets, x.strs.id(f.Detector))
	}
	for _, p := range l.Provenance {
		if p.TrustLevel == "untrusted" || p.TrustLevel == "external" {
			e.flags |= fUntrusted
		}
	}
	if (l.TraceID != "" || l.OTelTraceID != "") && l.RunID != "" && !isFallbackRun(l.AgentID, l.RunID) {
		e.flags |= fTraced
	}
	if l.TokenJTI != "" {
		e.flags |= fTokenJTI
	}
	for _, r := range l.Reasons {
		e.reasons = append(e.reasons, x.strs.id(r.Code))
		switch {
		case injectionReasons[r.Code]:
			e.flags |= fInjection
		case egressReasons[r.Code]:
			e.flags |= fEgress
		case r.Code == "budget_exceeded":
			e.flags |= fBudget
		case faultReasons[r.Code]:
			e.flags |= fFault
		case r.Code == "risk_halt":
			e.flags |= fHalt
		}
		if l.Decision == "deny" && policyReasons[r.Code] {
			e.flags |= fPolicyDeny
		}
	}
	for _, c := range l.ControlIDs {
		e.controls = append(e.controls, x.strs.id(c))
	}
	if l.Decision == "require_approval" && l.ApprovalID != "" {
		if len(x.requested) >= maxPendingTracked {
			for k := range x.requested {
				delete(x.requested, k)
				break
			}
		}
		x.requested[l.ApprovalID] = ts
		if len(x.held) >= maxPendingTracked {
			for k := range x.held {
				delete(x.held, k)
				break
			}
		}
		codes := make([]string, 0, len(l.Reasons))
		for _, r := range l.Reasons {
			codes = append(codes, r.Code)
		}
		x.held[l.DecisionID] = HeldCall{DecisionID: l.DecisionID, TS: l.TS.UTC(), Reasons: codes, ControlIDs: l.ControlIDs,
			StepRisk: l.StepRisk, CumulativeRisk: l.CumulativeRisk, Findings: l.EgressFindings, Provenance: l.Provenance}
	}
	// Keep events in time order (concurrent Checks may reach the log a
	// little out of order), so a window is one binary search away.
	n := len(x.events)
	if n == 0 || x.events[n-1].ts <= e.ts {
		x.events = append(x.events, e)
		return
	}
	i := sort.Search(n, func(i int) bool { return x.events[i].ts > e.ts })
	x.events = slices.Insert(x.events, i, e)
}

// HeldCall is the audit record of a call held for approval, as far as an
// approver may see it: codes, numbers, findings (detector, location, count,
// keyed hash — never the value) and the provenance labels (inspected before
// they were written).
type HeldCall struct {
	DecisionID     string             `json:"decision_id"`
	TS             time.Time          `json:"ts"`
	Reasons        []string           `json:"reasons"`
	ControlIDs     []string           `json:"control_ids"`
	StepRisk       audit.StepRisk     `json:"step_risk"`
	CumulativeRisk float64            `json:"cumulative_risk"`
	Findings       []HeldFinding      `json:"egress_findings"`
	Provenance     []audit.Provenance `json:"context_provenance"`
}

// HeldFinding is one egress finding of a held call.
type HeldFinding struct {
	Detector string `json:"detector"`
	Location string `json:"location"`
	Count    int    `json:"count"`
}

// Held returns the held call of decision id.
func (x *Index) Held(id string) (HeldCall, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	h, ok := x.held[id]
	return h, ok
}

// maxTools bounds the tools whose route versions are followed.
const maxTools = 10_000

// maxPendingTracked bounds the approvals waiting for their decision record.
const maxPendingTracked = 100_000

func (x *Index) version(ts time.Time, kind, v, from, source string) {
	if kind == "policy" {
		if v == x.lastPol {
			return
		}
		x.lastPol = v
	} else {
		if v == x.lastRoute {
			return
		}
		x.lastRoute = v
	}
	x.appendVersion(VersionChange{TS: ts.UTC(), Kind: kind, Version: v, From: from, Source: source})
}

func (x *Index) appendVersion(v VersionChange) {
	x.versions = append(x.versions, v)
	if len(x.versions) > 1000 {
		x.versions = x.versions[len(x.versions)-1000:]
	}
}

// isFallbackRun reports the run id the service gives calls that named none
// (one shared run per agent): such a run is not traced.
func isFallbackRun(agent, run string) bool { return run == "agent:"+agent }

// trim forgets events older than the retention, and the oldest quarter when
// there are more than MaxEvents; the string table is rebuilt from what is
// left so agent-chosen run ids cannot grow it without bound.
func (x *Index) trim(now time.Time) {
	cut := now.Add(-x.opts.Retention).UnixNano()
	i := 0
	for i < len(x.events) && x.events[i].ts < cut {
		i++
	}
	if len(x.decided) > maxPendingTracked {
		x.decided = x.decided[len(x.decided)-maxPendingTracked:]
	}
	if len(x.events)-i > x.opts.MaxEvents {
		i = len(x.events) - x.opts.MaxEvents*3/4
	}
	if i == 0 {
		return
	}
	keep := x.events[i:]
	var fresh interner
	remap := func(id uint32) uint32 { return fresh.id(x.strs.str(id)) }
	out := make([]event, len(keep))
	for j, e := range keep {
		e.run, e.agent, e.tool, e.decision = remap(e.run), remap(e.agent), remap(e.tool), remap(e.decision)
		for _, s := range [][]uint32{e.reasons, e.controls, e.dets} {
			for k := range s {
				s[k] = remap(s[k])
			}
		}
		out[j] = e
	}
	x.events, x.strs = out, fresh
	for len(x.decided) > 0 && x.decided[0].ts < cut {
		x.decided = x.decided[1:]
	}
}

// Versions is the policy and routes version history seen, oldest first.
func (x *Index) Versions() []VersionChange {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return append([]VersionChange(nil), x.versions...)
}

// Reason code families (extauthz/reason and the bundled policy).
var (
	injectionReasons = set("injection_detected", "injection_suspected", "untrusted_context_external_send", "untrusted_memory")
	egressReasons    = set("secret_egress", "pii_egress", "sensitive_egress", "destination_blocked", "egress_blocked", "payload_size")
	faultReasons     = set("store_unavailable", "audit_write_failed", "policy_error", "policy_timeout", "policy_not_ready", "deadline_exceeded", "internal_error")
	policyReasons    = set("untrusted_context_external_send", "injection_detected", "injection_suspected", "tool_not_allowed",
		"exec_after_sensitive_read", "untrusted_memory", "secret_egress", "pii_egress", "sensitive_egress", "destination_blocked",
		"payload_size", "tainted_run_external_send", "risk_halt", "budget_exceeded", "not_permitted")
)

func set(xs ...string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// inputKey starts a record's replay fields (input, sealed, policy): most of a
// Check's line, and written after every field the index reads.
var inputKey = []byte(`,"input":`)

// parseLine decodes what the index reads of a record line, without scanning
// its replay fields when it can: the line is cut at its first `,"input":` and
// closed. A quote inside a JSON string is always escaped, so that text can
// only be a key; cut inside a nested object or array the prefix does not
// parse (one brace closes only the top level), and the whole line is decoded
// instead. A prefix that parses is the record's own top-level fields.
//
// It decodes with go-json-experiment/json (encoding/json v2), about twice as
// fast as encoding/json for this struct; for the lines the audit log writes
// both read the same (TestParseLineSkipsOnlyReplayFields compares them). On
// an edited line they may differ (v2 refuses invalid UTF-8 and duplicate
// names, and matches names exactly): such a line is counted bad.
func parseLine(b []byte) (line, error) {
	var l line
	if i := bytes.Index(b, inputKey); i > 0 {
		short := make([]byte, i+1)
		copy(short, b[:i])
		short[i] = '}'
		if jsonv2.Unmarshal(short, &l) == nil {
			return l, nil
		}
		l = line{}
	}
	err := jsonv2.Unmarshal(b, &l)
	return l, err
}
