# The default AISecOps authorization policy.
#
# Query: data.aisecops.authz.result
#   {"decision": "allow" | "deny" | "require_approval",
#    "reasons": [{"code", "message", "control_id"}],
#    "obligations": {...}}
#
# Order: any deny reason wins; then any approval reason asks for a human unless
# the request carries a valid approval for this exact plan; otherwise allow only
# when nothing objected and the positive conditions hold. Anything else is the
# default deny.
#
# The Go side computes every number (risk, budget ratios) and every
# per-argument fact (egress findings) before evaluation; this file only looks
# things up and compares. Keep it that way: this is the hot path of every Check.
# Messages are shown to agents: never put input values (arguments, tokens,
# matched secrets) into them.
#
# Sections "---- 3.x" follow the threat classes of the AISecOps v1.0
# specification (section 3), each with the control it implements.
package aisecops.authz

import rego.v1

tool_class := input.route.tool_class

default decision := "deny"

decision := "deny" if {
	count(deny_reasons) > 0
} else := "require_approval" if {
	count(approval_reasons) > 0
	not approval_valid
} else := "allow" if {
	permitted
}

result := {
	"decision": decision,
	"reasons": reasons,
	"obligations": obligations,
}

reasons := sort(deny_reasons) if {
	decision == "deny"
	count(deny_reasons) > 0
} else := [{
	"code": "not_permitted",
	"message": "no policy rule permits this call",
	"control_id": "AIS-EXE-01",
}] if {
	decision == "deny"
} else := sort(approval_reasons) if {
	decision == "require_approval"
} else := [{
	"code": "allowed",
	"message": "allowed with a human approval",
	"control_id": "AIS-RSK-01",
}] if {
	count(approval_reasons) > 0
} else := [{
	"code": "allowed",
	"message": "allowed",
	"control_id": "AIS-EXE-01",
}]

# Obligations are flags, not input values: the Go side knows which approval
# and which token they name, and a decision that does not depend on the
# token's jti can be answered from the decision cache for the next token.

# An approval is spent by the allow it produced; the Go side marks it used.
obligations.approval_consumed := true if {
	decision == "allow"
	count(approval_reasons) > 0
}

# State-changing calls spend their capability token: the server accepts the
# token's jti only once.
obligations.consume_jti := true if {
	decision == "allow"
	single_use_token
}

# ---- facts ----------------------------------------------------------------

# Helper rules rather than lookups inside `not`: the compiler hoists a
# non-ground key out of a negation, and an undefined key would then silently
# make the negation undefined instead of true.
known_tool_class if data.aisecops.tool_classes[tool_class]

injection_denied_here if data.aisecops.injection_deny_classes[tool_class]

agent_known if input.agent.known == true

agent_authenticated if input.agent.authenticated == true

token_present if input.token.present == true

approval_valid if {
	input.approval.valid == true
	is_string(input.approval.id)
	input.approval.id != ""
}

# Both the Go flag and the list must agree: the policy is the second line.
tool_allowed if {
	input.agent.tool_allowed == true
	input.route.tool in input.agent.allowed_tools
}

# Identity comes only from a verified capability token, on every route class:
# model calls included (the token travels in x-aisecops-token there).
identity_ok if {
	agent_known
	agent_authenticated
}

permitted if {
	identity_ok
	tool_allowed
}

# A destination outside the organisation: an external send, a model API not
# run internally, or any route the operator marked untrusted.
external_route if data.aisecops.outbound_classes[tool_class]

external_route if {
	tool_class == "llm"
	input.route.trust != "internal"
}

external_route if input.route.trust == "untrusted"

single_use_token if {
	token_present
	input.token.single_use == true
}

single_use_token if {
	token_present
	data.aisecops.single_use_classes[tool_class]
}

# ---- identity and capability (AIS-CAP-01; Go denies these first) -----------

deny_reasons contains {
	"code": "agent_unknown",
	"message": "the agent is not in the configuration",
	"control_id": "AIS-CAP-01",
} if {
	not agent_known
}

deny_reasons contains {
	"code": "token_missing",
	"message": "a capability token is required for this tool",
	"control_id": "AIS-CAP-01",
} if {
	not token_present
}

deny_reasons contains {
	"code": "agent_unauthenticated",
	"message": "the agent identity is not verified",
	"control_id": "AIS-CAP-01",
} if {
	token_present
	not agent_authenticated
}

deny_reasons contains {
	"code": "route_unconfigured",
	"message": "the route has no known tool class",
	"control_id": "AIS-EXE-01",
} if {
	not known_tool_class
}

deny_reasons contains {
	"code": "token_policy_version",
	"message": "the token was issued under a policy version this server does not accept",
	"control_id": "AIS-CAP-01",
} if {
	token_present
	v := input.token.policy_version
	v != ""
	not v in data.aisecops.accepted_policy_versions
}

# ---- 3.2 tool abuse (AIS-CAP-01) -------------------------------------------

deny_reasons contains {
	"code": "tool_not_allowed",
	"message": "the agent is not allowed to use this tool",
	"control_id": "AIS-CAP-01",
} if {
	not tool_allowed
}

deny_reasons contains {
	"code": "exec_after_sensitive_read",
	"message": "execution after a read of internal data in the same run",
	"control_id": "AIS-CAP-01",
} if {
	input.route.tool_class == "exec"
	input.run.read_internal == true
}

# ---- 3.1 prompt injection (AIS-CTX-01) -------------------------------------

deny_reasons contains {
	"code": "untrusted_context_external_send",
	"message": "untrusted context cannot lead to an external send or execution",
	"control_id": "AIS-CTX-01",
} if {
	input.untrusted_context == true
	data.aisecops.outbound_classes[tool_class]
}

deny_reasons contains {
	"code": "injection_detected",
	"message": "instructions injected into the context",
	"control_id": "AIS-CTX-01",
} if {
	input.finding_classes.injection == true
	data.aisecops.injection_deny_classes[tool_class]
}

approval_reasons contains {
	"code": "injection_suspected",
	"message": "instructions injected into the context; a human must confirm",
	"control_id": "AIS-CTX-01",
} if {
	input.finding_classes.injection == true
	not injection_denied_here
}

# ---- 3.3 memory poisoning (AIS-CTX-02) -------------------------------------

approval_reasons contains {
	"code": "untrusted_memory",
	"message": "unverified memory led to a state-changing call",
	"control_id": "AIS-CTX-02",
} if {
	data.aisecops.state_changing_classes[tool_class]
	some p in input.provenance
	data.aisecops.memory_source_types[p.source_type]
	data.aisecops.untrusted_trust_levels[p.trust_level]
}

# ---- 3.4 chain escalation (AIS-RSK-01) -------------------------------------

deny_reasons contains {
	"code": "risk_halt",
	"message": "the run's cumulative risk is over the halt threshold",
	"control_id": "AIS-RSK-01",
} if {
	input.risk.total > input.agent.halt_threshold
}

approval_reasons contains {
	"code": "approval_required",
	"message": "the run's cumulative risk is over the approval threshold",
	"control_id": "AIS-RSK-01",
} if {
	input.risk.total > input.agent.approval_threshold
	input.plan.protocol == false # MCP protocol traffic reaches no tool: no human needed
}

deny_reasons contains {
	"code": "budget_exceeded",
	"message": "the run's budget is exhausted",
	"control_id": "AIS-RSK-01",
} if {
	input.budget.exceeded != ""
}

# ---- 3.5 data exfiltration (AIS-EXE-01) ------------------------------------

deny_reasons contains {
	"code": "secret_egress",
	"message": "a secret would leave the trust boundary",
	"control_id": "AIS-EXE-01",
} if {
	input.finding_classes.secret == true
	external_route
}

approval_reasons contains {
	"code": "pii_egress",
	"message": "personal data would leave the trust boundary",
	"control_id": "AIS-EXE-01",
} if {
	input.finding_classes.pii == true
	external_route
}

deny_reasons contains {
	"code": "destination_blocked",
	"message": "the destination is not allowed for this tool",
	"control_id": "AIS-EXE-01",
} if {
	input.finding_classes.destination == true
}

# Document-level sensitivity (classification markers, contract clauses) bound
# outside: the AISecOps specification's data-exfiltration case (v1.0, section
# 3.5), contract terms sent verbatim to a chat channel.
deny_reasons contains {
	"code": "sensitive_egress",
	"message": "confidential document content would leave the trust boundary",
	"control_id": "AIS-EXE-01",
} if {
	input.finding_classes.sensitive == true
	external_route
}

# A payload far larger than the tool class carries is data leaving, not a call.
approval_reasons contains {
	"code": "payload_size",
	"message": "the payload is unusually large for this tool; a human must confirm",
	"control_id": "AIS-EXE-01",
} if {
	input.finding_classes.size == true
}

# Once a run has consumed untrusted or injection-flagged context, nothing it
# does may leave the trust boundary without a human (AIS-CTX-01).
deny_reasons contains {
	"code": "tainted_run_external_send",
	"message": "the run consumed untrusted context before this external send",
	"control_id": "AIS-CTX-01",
} if {
	input.run.tainted == true
	data.aisecops.outbound_classes[tool_class]
}
