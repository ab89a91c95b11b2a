package extauthz

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
)

// Sealer encrypts what a replay needs but the audit log must not hold in
// clear: the call's arguments and the agent-written strings the record
// redacts. *audit.Sealer is one.
type Sealer interface {
	Seal(plaintext, aad []byte) audit.Sealed
}

// Opener opens what a Sealer sealed, for a replay. *audit.Sealer is one.
type Opener interface {
	Open(v audit.Sealed, aad []byte) ([]byte, error)
}

var (
	_ Sealer = (*audit.Sealer)(nil)
	_ Opener = (*audit.Sealer)(nil)
)

// ErrNotReplayable: the record carries no policy input (a stage before the
// policy decided, the record is an event, or it was written without a
// Sealer). A replay keeps its decision as recorded.
var ErrNotReplayable = errors.New("extauthz: the record carries no policy input")

// sealedValues is the plaintext of a record's Sealed.
type sealedValues struct {
	Arguments json.RawMessage `json:"arguments"`
	// Strings are agent-written strings of the input that the record shows
	// redacted, in clear, by input path (agentStrings).
	Strings map[string]string `json:"strings,omitempty"`
}

// agentStrings visits the policy input's agent-written strings, by path.
// These are what redaction may change in the record's open Input; nothing
// else in the input is written by the agent (route, thresholds, budgets,
// risk factors and findings come from configuration and the stages).
func agentStrings(in *policy.Input, visit func(path string, s *string)) {
	visit("request.id", &in.Request.ID)
	visit("plan.tool", &in.Plan.Tool)
	visit("plan.mcp_method", &in.Plan.MCPMethod)
	visit("plan.trace_id", &in.Plan.TraceID)
	visit("plan.run_id", &in.Plan.RunID)
	visit("run.id", &in.Run.ID)
	visit("token.run_id", &in.Token.RunID)
	visit("approval.id", &in.Approval.ID)
	for i := range in.Provenance {
		p, at := &in.Provenance[i], "provenance."+strconv.Itoa(i)+"."
		visit(at+"source_type", &p.SourceType)
		visit(at+"source_name", &p.SourceName)
		visit(at+"trust_level", &p.TrustLevel)
		visit(at+"source_hash", &p.SourceHash)
	}
}

// sealInput puts what a replay needs into rec: the verdict's policy input in
// the open with its arguments null and its agent-written strings redacted,
// those values sealed under the decision id, and the policy's own decision.
// With no Sealer or no input (a stage before the policy decided) it adds
// nothing.
func sealInput(rec *audit.Record, v *Verdict, s Sealer, redact func(string) string) error {
	if s == nil || v.Input == nil || v.Policy == nil {
		return nil
	}
	open := *v.Input
	open.Provenance = slices.Clone(open.Provenance)
	open.Plan.Arguments = nil
	sv := sealedValues{Arguments: v.Input.Plan.Arguments}
	if redact != nil {
		agentStrings(&open, func(path string, p *string) {
			if r := redact(*p); r != *p {
				if sv.Strings == nil {
					sv.Strings = map[string]string{}
				}
				sv.Strings[path], *p = *p, r
			}
		})
	}
	in, err := open.EncodeJSON()
	if err != nil {
		return fmt.Errorf("encode the policy input: %w", err)
	}
	plain, err := json.Marshal(&sv)
	if err != nil {
		return fmt.Errorf("encode the sealed values: %w", err)
	}
	sealed := s.Seal(plain, []byte(rec.DecisionID))
	rec.Input, rec.Sealed = in, &sealed
	rec.Policy = &audit.PolicyDecision{Decision: v.Policy.Decision, Reasons: reasonCodes(v.Policy.Reasons)}
	return nil
}

// Unseal restores the policy input a record's decision was taken on, its
// arguments and agent-written strings included. It fails when the sealed
// values do not open (another deployment's key, an altered record, or one
// moved under another decision id) or do not fit the input.
func Unseal(rec *audit.Record, o Opener) (*policy.Input, error) {
	if len(rec.Input) == 0 {
		return nil, ErrNotReplayable
	}
	if rec.Sealed == nil {
		return nil, errors.New("extauthz: the record's input has no sealed values")
	}
	var in policy.Input
	if err := json.Unmarshal(rec.Input, &in); err != nil {
		return nil, fmt.Errorf("extauthz: the record's input: %w", err)
	}
	plain, err := o.Open(*rec.Sealed, []byte(rec.DecisionID))
	if err != nil {
		return nil, err
	}
	var sv sealedValues
	if err := json.Unmarshal(plain, &sv); err != nil {
		return nil, fmt.Errorf("extauthz: the record's sealed values: %w", err)
	}
	in.Plan.Arguments = sv.Arguments
	placed := 0
	agentStrings(&in, func(path string, p *string) {
		if v, ok := sv.Strings[path]; ok {
			*p = v
			placed++
		}
	})
	if placed != len(sv.Strings) {
		return nil, errors.New("extauthz: the record's sealed values do not fit its input")
	}
	return &in, nil
}

func reasonCodes(rs []policy.Reason) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Code
	}
	return out
}
