# The default capability-token issuance policy (POST /v1/tokens).
#
# Query: data.aisecops.tokens.result
#   {"decision": "allow" | "deny",
#    "reasons": [{"code", "message", "control_id"}],
#    "max_ttl_seconds": number}      # optional: a cap on the token's lifetime
#
# Input (extauthz/policy.TokenInput): the caller proved who it is with a
# workload credential before this runs; Go has looked the agent and the tool up
# in the configuration and checked the run id's syntax:
#   agent:      {id, known, tool_allowed, allowed_tools}
#   tool:       {name, known, class, trust, base_risk}
#   request:    {scope, run_id, run_valid, ttl_seconds, single_use, max_rows?, max_cost?, expiry?}
#   credential: {kind, issuer, subject, namespace, service_account}
#   time:       {now_ns, rfc3339}
#
# A token is issued only when nothing objected and the positive conditions
# hold; anything else is the default deny. Messages are shown to agents: never
# put input values into them.
package aisecops.tokens

import rego.v1

default decision := "deny"

decision := "deny" if {
	count(deny_reasons) > 0
} else := "allow" if {
	permitted
}

result := object.union(
	{"decision": decision, "reasons": reasons},
	ttl_cap,
)

reasons := sort(deny_reasons) if {
	decision == "deny"
	count(deny_reasons) > 0
} else := [{
	"code": "not_permitted",
	"message": "no policy rule permits this token",
	"control_id": "AIS-CAP-01",
}] if {
	decision == "deny"
} else := [{
	"code": "allowed",
	"message": "token issued",
	"control_id": "AIS-CAP-01",
}]

# Execution and external sends get short-lived tokens: the smallest cap that
# applies to the tool's class (data.aisecops.token_max_ttl_seconds) wins.
ttl_caps contains s if {
	s := data.aisecops.token_max_ttl_seconds[input.tool.class]
}

default ttl_cap := {}

ttl_cap := {"max_ttl_seconds": min(ttl_caps)} if {
	decision == "allow"
	count(ttl_caps) > 0
}

# ---- facts -------------------------------------------------------------------

agent_known if input.agent.known == true

tool_known if input.tool.known == true

# Both the Go flag and the list must agree: the policy is the second line.
tool_allowed if {
	tool_known
	input.agent.tool_allowed == true
	input.tool.name in input.agent.allowed_tools
}

run_named if input.request.run_id != ""

run_ok if not run_named

run_ok if {
	run_named
	input.request.run_valid == true
}

# An empty list (the default) accepts workloads of every namespace.
namespace_restricted if count(data.aisecops.token_workload_namespaces) > 0

namespace_ok if not namespace_restricted

namespace_ok if {
	namespace_restricted
	input.credential.namespace in data.aisecops.token_workload_namespaces
}

permitted if {
	agent_known
	tool_allowed
	run_ok
	namespace_ok
}

# ---- deny reasons ------------------------------------------------------------

deny_reasons contains {
	"code": "agent_unknown",
	"message": "the agent is not in the configuration",
	"control_id": "AIS-CAP-01",
} if {
	not agent_known
}

# An unknown tool is refused with the same reason as a forbidden one: the
# answer must not tell an agent which tools exist.
deny_reasons contains {
	"code": "tool_not_allowed",
	"message": "the agent is not allowed to use this tool",
	"control_id": "AIS-CAP-01",
} if {
	agent_known
	not tool_allowed
}

deny_reasons contains {
	"code": "run_invalid",
	"message": "the run id is not valid",
	"control_id": "AIS-CAP-01",
} if {
	not run_ok
}

deny_reasons contains {
	"code": "workload_namespace",
	"message": "workloads of this namespace may not obtain tokens",
	"control_id": "AIS-CAP-01",
} if {
	not namespace_ok
}
