// Package reason owns the stable reason codes of every decision. A code is the
// audit field, the metrics label and the JSON body's reasons[].code at once, so a
// code, once shipped, is never renamed. It must not import any other package of
// this module.
package reason

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is a stable, machine-readable reason for a decision.
type Code string

// Codes decided before policy (malformed input, bad tokens, misconfiguration).
const (
	RouteUnconfigured Code = "route_unconfigured" // Check without the route's context extensions
	BadRequest        Code = "bad_request"        // a malformed header or attribute
	DuplicateHeader   Code = "duplicate_header"   // a single-valued x-aisecops header sent twice
	BadPlan           Code = "bad_plan"           // body or plan header is not a valid plan
	DuplicateKey      Code = "duplicate_key"      // JSON object with a repeated or case-variant key
	PartialBody       Code = "partial_body"       // Envoy cut the body (x-envoy-auth-partial-body or too large)
	BatchRejected     Code = "batch_rejected"     // a JSON-RPC batch that cannot be evaluated element by element
	PlanConflict      Code = "plan_conflict"      // header plan and body plan disagree
	ToolMismatch      Code = "tool_mismatch"      // the plan names a tool other than the route's
	AgentMismatch     Code = "agent_mismatch"     // the plan names an agent other than the token's
	AgentUnknown      Code = "agent_unknown"      // agent not in the configuration
	RunMismatch       Code = "run_mismatch"       // token bound to another run
	RunNotOwned       Code = "run_not_owned"      // the run id belongs to another agent

	TokenMissing       Code = "token_missing"
	TokenMalformed     Code = "token_malformed"
	TokenTooLarge      Code = "token_too_large"
	TokenAlgorithm     Code = "token_algorithm"        // alg not in the fixed list (none, HS*, …)
	TokenUnknownKey    Code = "token_unknown_key"      // kid selects no configured key
	TokenForbiddenHdr  Code = "token_forbidden_header" // jku, x5u, jwk, x5c, crit headers
	TokenSignature     Code = "token_signature"
	TokenExpired       Code = "token_expired"
	TokenNotYetValid   Code = "token_not_yet_valid" // nbf or iat in the future
	TokenLifetime      Code = "token_lifetime"      // exp - iat over the maximum, or exp/iat missing
	TokenAudience      Code = "token_audience"
	TokenIssuer        Code = "token_issuer"
	TokenClaims        Code = "token_claims"        // required claim missing or of the wrong type
	TokenToolMismatch  Code = "token_tool_mismatch" // tool claim ≠ route tool
	TokenPolicyVersion Code = "token_policy_version"
	TokenScope         Code = "token_scope"
	TokenReplayed      Code = "token_replayed"
	TokenRevoked       Code = "token_revoked"
	TokenConstraint    Code = "token_constraint" // max_rows, max_cost, expiry constraint violated
)

// Codes decided by policy or by run state.
const (
	PolicyAllow      Code = "allowed"
	PolicyError      Code = "policy_error"   // undefined, erroring or ill-shaped evaluation
	PolicyTimeout    Code = "policy_timeout" // evaluation passed the Check deadline
	PolicyNotReady   Code = "policy_not_ready"
	BudgetExceeded   Code = "budget_exceeded"
	RiskHalt         Code = "risk_halt"
	ApprovalRequired Code = "approval_required"
	ApprovalInvalid  Code = "approval_invalid"
	ApprovalLimit    Code = "approval_limit"    // too many approvals pending for the run or agent
	DuplicateRequest Code = "duplicate_request" // Envoy retry of a committed request id
	DryRun           Code = "dry_run"
	EgressBlocked    Code = "egress_blocked"
)

// Internal faults: always a 503 deny.
const (
	StoreUnavailable Code = "store_unavailable"
	AuditFailed      Code = "audit_write_failed"
	DeadlineExceeded Code = "deadline_exceeded"
	Internal         Code = "internal_error"
)

// HTTPStatus is the status Envoy returns to the agent for a denial carrying code.
func HTTPStatus(c Code) int {
	switch c {
	case BudgetExceeded:
		return http.StatusTooManyRequests
	case PartialBody:
		return http.StatusRequestEntityTooLarge
	case StoreUnavailable, AuditFailed, DeadlineExceeded, Internal, PolicyNotReady, PolicyTimeout:
		return http.StatusServiceUnavailable
	default:
		return http.StatusForbidden
	}
}

// Error is a denial raised by a stage before policy. Message is safe to show the
// agent; it must never contain a token, a matched secret or internal detail.
type Error struct {
	Code    Code
	Message string
	Err     error // internal detail for logs; never sent to the agent
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an *Error with code and message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error carrying err as internal detail.
func Wrap(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// CodeOf returns the code of the first *Error in err's chain, or Internal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// ControlID maps a code decided before or around policy to the AISecOps
// control it enforces (policy reasons carry their own).
func ControlID(c Code) string {
	switch c {
	case TokenExpired, TokenLifetime, TokenNotYetValid:
		return "AIS-CAP-02"
	case TokenMissing, TokenMalformed, TokenTooLarge, TokenAlgorithm, TokenUnknownKey,
		TokenForbiddenHdr, TokenSignature, TokenAudience, TokenIssuer, TokenClaims,
		TokenToolMismatch, TokenPolicyVersion, TokenScope, TokenReplayed, TokenRevoked,
		TokenConstraint, AgentMismatch, AgentUnknown, RunMismatch, RunNotOwned:
		return "AIS-CAP-01"
	case BudgetExceeded, RiskHalt:
		return "AIS-RSK-01"
	case StoreUnavailable, AuditFailed:
		return "AIS-OBS-01"
	}
	return "AIS-EXE-01"
}
