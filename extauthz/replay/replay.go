// Package replay decides recorded Checks again under another policy bundle
// (and routes file) and lists what would change: the replay diff a team runs
// before rolling out a policy (AISecOps v1.0 sections 11.5 and 27).
//
// A record is replayable when it carries its policy input (audit.Record.Input,
// written when the server has a Sealer): the input's open part and its sealed
// arguments, opened with the deployment's seal keys, give back exactly what
// the policy saw. Policies have no clock, network or randomness, so under the
// bundle that decided, every replayed decision equals the recorded one. Records
// decided before the policy (a bad token, a malformed request) and event
// records are counted as not replayable and kept as they were: no bundle
// changes them.
//
// Replay decides and returns; it writes nothing, commits nothing and
// requests no approval.
package replay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
)

// Options says what to replay under.
type Options struct {
	// Bundle is the candidate policy bundle.
	Bundle *policy.Bundle
	// Directory, when set, is a candidate routes file: routes and agents come
	// from it instead of the records (extauthz.Redecide).
	Directory *extauthz.Directory
	// Opener opens the records' sealed values (the deployment's seal keys).
	Opener extauthz.Opener
}

// Change kinds.
const (
	AllowToDeny     = "allow_to_deny"
	DenyToAllow     = "deny_to_allow"
	ApprovalChanged = "approval_changed" // to or from require_approval
	ReasonsChanged  = "reasons_changed"  // the same decision for other reasons
)

// Change is one recorded call the candidate decides differently.
type Change struct {
	DecisionID    string   `json:"decision_id"`
	RunID         string   `json:"run_id"`
	AgentID       string   `json:"agent_id"`
	Tool          string   `json:"tool"`
	Kind          string   `json:"kind"`
	Before        string   `json:"before"`
	After         string   `json:"after"`
	ReasonsBefore []string `json:"reasons_before"`
	ReasonsAfter  []string `json:"reasons_after"`
}

// Counts are a tool's or an agent's replayed calls and changes by kind.
type Counts struct {
	Replayed int            `json:"replayed"`
	Changed  int            `json:"changed"`
	ByKind   map[string]int `json:"by_kind,omitempty"`
}

// Problem is a record that should have replayed and could not: its sealed
// values did not open (another deployment's keys, an altered record) or the
// candidate could not decide it. A replay with problems is not a clean one.
type Problem struct {
	DecisionID string `json:"decision_id"`
	Error      string `json:"error"`
}

// Report is a replay's result. Total counts the Check records read;
// Replayed those decided again; NotReplayable those kept as recorded.
type Report struct {
	Total         int               `json:"total"`
	Replayed      int               `json:"replayed"`
	NotReplayable int               `json:"not_replayable"`
	Changed       int               `json:"changed"`
	Changes       []Change          `json:"changes"`
	ByTool        map[string]Counts `json:"by_tool"`
	ByAgent       map[string]Counts `json:"by_agent"`
	Problems      []Problem         `json:"problems,omitempty"`
}

// Clean reports whether nothing changed and every replayable record replayed.
func (r *Report) Clean() bool { return r.Changed == 0 && len(r.Problems) == 0 }

// Diff replays every Check record of recs under opts. Event records (approval
// decisions, revocations, version changes) are skipped and not counted. It
// stops early only when ctx ends.
func Diff(ctx context.Context, recs []audit.Record, opts Options) (Report, error) {
	if opts.Bundle == nil {
		return Report{}, errors.New("replay: no candidate bundle")
	}
	if opts.Opener == nil {
		return Report{}, errors.New("replay: no seal keys to open the recorded arguments")
	}
	rep := Report{Changes: []Change{}, ByTool: map[string]Counts{}, ByAgent: map[string]Counts{}}
	for i := range recs {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		r := &recs[i]
		if r.Event != "" {
			continue
		}
		rep.Total++
		c, err := One(ctx, r, opts)
		switch {
		case errors.Is(err, extauthz.ErrNotReplayable):
			rep.NotReplayable++
			continue
		case err != nil:
			rep.Problems = append(rep.Problems, Problem{DecisionID: r.DecisionID, Error: err.Error()})
			continue
		}
		rep.Replayed++
		count(rep.ByTool, r.Tool, c)
		count(rep.ByAgent, r.AgentID, c)
		if c != nil {
			rep.Changed++
			rep.Changes = append(rep.Changes, *c)
		}
	}
	return rep, nil
}

// One replays one record: the change it shows under opts, or nil when the
// candidate decides it as recorded. The error is extauthz.ErrNotReplayable
// for a record without a policy input.
func One(ctx context.Context, r *audit.Record, opts Options) (*Change, error) {
	if r.Policy == nil || len(r.Input) == 0 {
		return nil, extauthz.ErrNotReplayable
	}
	in, err := extauthz.Unseal(r, opts.Opener)
	if err != nil {
		return nil, err
	}
	v, err := extauthz.Redecide(ctx, in, opts.Bundle, opts.Directory)
	if err != nil {
		return nil, fmt.Errorf("replay %s: %w", r.DecisionID, err)
	}
	after := make([]string, len(v.Reasons))
	for i, x := range v.Reasons {
		after[i] = x.Code
	}
	before := r.Policy
	kind := ""
	switch {
	case before.Decision == v.Decision && slices.Equal(before.Reasons, after):
		return nil, nil
	case before.Decision == v.Decision:
		kind = ReasonsChanged
	case before.Decision == policy.RequireApproval || v.Decision == policy.RequireApproval:
		kind = ApprovalChanged
	case before.Decision == policy.Allow:
		kind = AllowToDeny
	default:
		kind = DenyToAllow
	}
	return &Change{DecisionID: r.DecisionID, RunID: r.RunID, AgentID: r.AgentID, Tool: r.Tool, Kind: kind,
		Before: before.Decision, After: v.Decision, ReasonsBefore: nonNil(before.Reasons), ReasonsAfter: after}, nil
}

func count(m map[string]Counts, key string, c *Change) {
	n := m[key]
	n.Replayed++
	if c != nil {
		n.Changed++
		if n.ByKind == nil {
			n.ByKind = map[string]int{}
		}
		n.ByKind[c.Kind]++
	}
	m[key] = n
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Kinds lists the change kinds in a stable order, for printing.
func Kinds(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
