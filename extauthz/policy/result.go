package policy

import (
	"errors"
	"fmt"

	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// decodeResult accepts exactly one result of the expected shape and nothing
// else (to OPA an undefined decision is an empty result set, not an error).
// The check is strict on purpose: a typo in a policy ("decsion") must deny with
// policy_error, not fall through to some default.
func decodeResult(rs rego.ResultSet) (Decision, error) {
	d, err := decodeShape(rs)
	if err != nil {
		return Decision{}, reason.Wrap(reason.PolicyError, err, "policy result invalid")
	}
	return d, nil
}

func decodeShape(rs rego.ResultSet) (Decision, error) {
	switch {
	case len(rs) == 0:
		return Decision{}, errors.New("undefined: " + Query)
	case len(rs) > 1:
		return Decision{}, fmt.Errorf("%d results", len(rs))
	case len(rs[0].Expressions) != 1:
		return Decision{}, fmt.Errorf("%d expressions", len(rs[0].Expressions))
	}
	doc, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return Decision{}, fmt.Errorf("result is %T, not an object", rs[0].Expressions[0].Value)
	}
	var d Decision
	for k, v := range doc {
		switch k {
		case "decision":
			s, _ := v.(string)
			switch s {
			case Allow, Deny, RequireApproval:
				d.Decision = s
			default:
				return Decision{}, fmt.Errorf("decision %q is not allow, deny or require_approval", fmt.Sprint(v))
			}
		case "reasons":
			rs, err := decodeReasons(v)
			if err != nil {
				return Decision{}, err
			}
			d.Reasons = rs
		case "obligations":
			o, ok := v.(map[string]any)
			if !ok {
				return Decision{}, fmt.Errorf("obligations is %T, not an object", v)
			}
			if len(o) > 0 {
				d.Obligations = o
			}
		default:
			return Decision{}, fmt.Errorf("unexpected key %q", k)
		}
	}
	if d.Decision == "" {
		return Decision{}, errors.New("no decision")
	}
	if d.Decision != Allow && len(d.Reasons) == 0 {
		return Decision{}, fmt.Errorf("%s without reasons", d.Decision)
	}
	return d, nil
}

func decodeReasons(v any) ([]Reason, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("reasons is %T, not an array", v)
	}
	out := make([]Reason, 0, len(list))
	for i, x := range list {
		m, ok := x.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("reasons[%d] is %T, not an object", i, x)
		}
		var r Reason
		for k, v := range m {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("reasons[%d].%s is %T, not a string", i, k, v)
			}
			switch k {
			case "code":
				r.Code = s
			case "message":
				r.Message = s
			case "control_id":
				r.ControlID = s
			default:
				return nil, fmt.Errorf("reasons[%d]: unexpected key %q", i, k)
			}
		}
		if r.Code == "" {
			return nil, fmt.Errorf("reasons[%d]: no code", i)
		}
		out = append(out, r)
	}
	return out, nil
}
