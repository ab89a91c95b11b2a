package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// TokenQuery is the query the engine evaluates for each token request
// (POST /v1/tokens).
const TokenQuery = "data.aisecops.tokens.result"

// TokenInput is the document Rego sees as `input` when deciding whether to
// issue a capability token. As with Input, Go computes the facts (is the agent
// known, is the tool in its list, is the run id well formed) and the policy
// decides; time comes in here because policies have no clock.
type TokenInput struct {
	Time       Time            `json:"time"`
	Agent      TokenAgent      `json:"agent"`
	Tool       TokenTool       `json:"tool"`
	Request    TokenRequest    `json:"request"`
	Credential TokenCredential `json:"credential"`
}

// TokenAgent is the caller as its workload credential names it, with its
// configuration.
type TokenAgent struct {
	ID           string   `json:"id"`
	Known        bool     `json:"known"`
	ToolAllowed  bool     `json:"tool_allowed"` // requested tool ∈ allowed_tools
	AllowedTools []string `json:"allowed_tools"`
}

// TokenTool is the requested tool with its configuration; Class, Trust and
// BaseRisk are empty when the tool is not configured.
type TokenTool struct {
	Name     string  `json:"name"`
	Known    bool    `json:"known"`
	Class    string  `json:"class"`
	Trust    string  `json:"trust"`
	BaseRisk float64 `json:"base_risk"`
}

// TokenRequest is what the agent asked the token to grant.
type TokenRequest struct {
	Scope      string   `json:"scope"`
	RunID      string   `json:"run_id"`
	RunValid   bool     `json:"run_valid"` // RunID is empty or a well-formed id
	TTLSeconds int64    `json:"ttl_seconds"`
	SingleUse  bool     `json:"single_use"`
	MaxRows    *int64   `json:"max_rows,omitempty"`
	MaxCost    *float64 `json:"max_cost,omitempty"`
	Expiry     string   `json:"expiry,omitempty"`
}

// TokenCredential describes the verified workload credential (never the
// credential itself).
type TokenCredential struct {
	Kind           string `json:"kind"` // "jwt" or "client_certificate"
	Issuer         string `json:"issuer"`
	Subject        string `json:"subject"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"service_account"`
}

// TokenDecision is data.aisecops.tokens.result.
type TokenDecision struct {
	Decision string   `json:"decision"` // allow | deny
	Reasons  []Reason `json:"reasons"`
	// MaxTTL caps the token's lifetime (max_ttl_seconds); 0 when the policy sets
	// no cap of its own.
	MaxTTL time.Duration `json:"-"`
}

// maxPolicyTTLSeconds bounds max_ttl_seconds so the conversion to a Duration
// cannot overflow; a day is far beyond any capability token's lifetime.
const maxPolicyTTLSeconds = 86400

// EvalToken evaluates the token-issuance policy. Its strictness is Eval's: on
// any failure it returns a deny TokenDecision carrying the failure's code and a
// *reason.Error — PolicyNotReady without a bundle, PolicyTimeout when ctx ends
// first, PolicyError for an undefined, conflicting, erroring or ill-shaped
// result (a bundle without package aisecops.tokens is such a bundle). It never
// panics.
func (e *Engine) EvalToken(ctx context.Context, in *TokenInput) (TokenDecision, error) {
	return e.Current().EvalToken(ctx, in)
}

// EvalToken evaluates the bundle's token-issuance policy (Engine.EvalToken).
func (c *Bundle) EvalToken(ctx context.Context, in *TokenInput) (d TokenDecision, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = reason.Wrap(reason.PolicyError, fmt.Errorf("panic: %v", r), "policy evaluation failed")
		}
		if err != nil {
			dd := denyFor(err)
			d = TokenDecision{Decision: Deny, Reasons: dd.Reasons}
		}
	}()
	if c == nil {
		return TokenDecision{}, reason.New(reason.PolicyNotReady, "policy not loaded")
	}
	if in == nil {
		return TokenDecision{}, reason.New(reason.PolicyError, "no policy input")
	}
	v, err := tokenInputValue(in)
	if err != nil {
		return TokenDecision{}, reason.Wrap(reason.PolicyError, err, "policy input invalid")
	}
	rs, err := run(ctx, c.tokenQuery, rego.EvalParsedInput(v))
	if err != nil {
		return TokenDecision{}, err
	}
	d, err = decodeTokenShape(rs)
	if err != nil {
		return TokenDecision{}, reason.Wrap(reason.PolicyError, err, "policy result invalid")
	}
	return d, nil
}

// tokenInputValue converts in through JSON: token requests are rare next to
// Checks, so the hand-built conversion of inputValue is not worth its code.
// Nil slices become empty arrays, as in inputValue; a non-finite number is an
// error (json.Marshal refuses it).
func tokenInputValue(in *TokenInput) (ast.Value, error) {
	cp := *in
	if cp.Agent.AllowedTools == nil {
		cp.Agent.AllowedTools = []string{}
	}
	b, err := json.Marshal(&cp)
	if err != nil {
		return nil, err
	}
	return ast.ValueFromReader(bytes.NewReader(b))
}

// decodeTokenShape accepts exactly one result of the shape
// {decision: allow|deny, reasons: [...], max_ttl_seconds?: number > 0} and
// nothing else, for the same reason decodeShape is strict.
func decodeTokenShape(rs rego.ResultSet) (TokenDecision, error) {
	switch {
	case len(rs) == 0:
		return TokenDecision{}, errors.New("undefined: " + TokenQuery)
	case len(rs) > 1:
		return TokenDecision{}, fmt.Errorf("%d results", len(rs))
	case len(rs[0].Expressions) != 1:
		return TokenDecision{}, fmt.Errorf("%d expressions", len(rs[0].Expressions))
	}
	doc, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return TokenDecision{}, fmt.Errorf("result is %T, not an object", rs[0].Expressions[0].Value)
	}
	var d TokenDecision
	for k, v := range doc {
		switch k {
		case "decision":
			s, _ := v.(string)
			switch s {
			case Allow, Deny:
				d.Decision = s
			default:
				return TokenDecision{}, fmt.Errorf("decision %q is not allow or deny", fmt.Sprint(v))
			}
		case "reasons":
			rs, err := decodeReasons(v)
			if err != nil {
				return TokenDecision{}, err
			}
			d.Reasons = rs
		case "max_ttl_seconds":
			ttl, err := decodeTTL(v)
			if err != nil {
				return TokenDecision{}, err
			}
			d.MaxTTL = ttl
		default:
			return TokenDecision{}, fmt.Errorf("unexpected key %q", k)
		}
	}
	if d.Decision == "" {
		return TokenDecision{}, errors.New("no decision")
	}
	if d.Decision == Deny && len(d.Reasons) == 0 {
		return TokenDecision{}, errors.New("deny without reasons")
	}
	return d, nil
}

// decodeTTL reads max_ttl_seconds: a positive, finite number of seconds no
// larger than maxPolicyTTLSeconds. Anything else is a broken policy, not "no cap".
func decodeTTL(v any) (time.Duration, error) {
	var f float64
	switch n := v.(type) {
	case json.Number:
		var err error
		if f, err = n.Float64(); err != nil {
			return 0, fmt.Errorf("max_ttl_seconds %q: %w", n, err)
		}
	case float64:
		f = n
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	default:
		return 0, fmt.Errorf("max_ttl_seconds is %T, not a number", v)
	}
	if math.IsNaN(f) || f <= 0 || f > maxPolicyTTLSeconds {
		return 0, fmt.Errorf("max_ttl_seconds %v is outside (0, %d]", f, maxPolicyTTLSeconds)
	}
	return time.Duration(f * float64(time.Second)), nil
}
