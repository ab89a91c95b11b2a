# Unit tests for tokens.rego: each deny reason on its own, the allow path, the
# TTL caps and the shape of the result.
package aisecops.tokens_test

import rego.v1

import data.aisecops.tokens

# A known agent asking for a read tool it may use, in a well-formed run.
base := {
	"time": {"now_ns": 1767225600000000000, "rfc3339": "2026-01-01T00:00:00Z"},
	"agent": {
		"id": "demo-agent", "known": true, "tool_allowed": true,
		"allowed_tools": ["db.read", "db.write", "send_email", "shell.exec"],
	},
	"tool": {"name": "db.read", "known": true, "class": "read", "trust": "internal", "base_risk": 0.2},
	"request": {"scope": "crm", "run_id": "run-1", "run_valid": true, "ttl_seconds": 300, "single_use": false},
	"credential": {
		"kind": "jwt", "issuer": "https://kubernetes.default.svc",
		"subject": "system:serviceaccount:agents:demo-agent", "namespace": "agents", "service_account": "demo-agent",
	},
}

with_input(patch) := object.union(base, patch)

codes(res) := {r.code | some r in res.reasons}

test_allowed if {
	res := tokens.result with input as base
	res.decision == "allow"
	codes(res) == {"allowed"}
	not "max_ttl_seconds" in object.keys(res)
}

test_allowed_without_run if {
	res := tokens.result with input as with_input({"request": {"scope": "", "run_id": "", "run_valid": true, "ttl_seconds": 60, "single_use": false}})
	res.decision == "allow"
}

test_agent_unknown if {
	res := tokens.result with input as with_input({"agent": {"id": "mallory", "known": false, "tool_allowed": false, "allowed_tools": []}})
	res.decision == "deny"
	codes(res) == {"agent_unknown"}
}

test_tool_not_in_allowed_tools if {
	inp := with_input({
		"agent": {"id": "demo-agent", "known": true, "tool_allowed": false, "allowed_tools": ["db.read"]},
		"tool": {"name": "shell.exec", "known": true, "class": "exec", "trust": "neutral", "base_risk": 0.9},
	})
	res := tokens.result with input as inp
	res.decision == "deny"
	codes(res) == {"tool_not_allowed"}
	not "max_ttl_seconds" in object.keys(res)
}

# The Go flag alone is not enough: the list must agree.
test_tool_flag_without_list if {
	inp := with_input({"agent": {"id": "demo-agent", "known": true, "tool_allowed": true, "allowed_tools": ["db.write"]}})
	res := tokens.result with input as inp
	codes(res) == {"tool_not_allowed"}
}

# Nor is the list: a tool the configuration does not know is refused.
test_tool_unknown if {
	inp := with_input({"tool": {"name": "db.read", "known": false, "class": "", "trust": "", "base_risk": 0}})
	res := tokens.result with input as inp
	codes(res) == {"tool_not_allowed"}
}

test_run_invalid if {
	inp := with_input({"request": {"scope": "", "run_id": "bad run", "run_valid": false, "ttl_seconds": 60, "single_use": false}})
	res := tokens.result with input as inp
	res.decision == "deny"
	codes(res) == {"run_invalid"}
}

test_every_reason_at_once if {
	inp := with_input({
		"agent": {"id": "x", "known": false, "tool_allowed": false, "allowed_tools": []},
		"request": {"scope": "", "run_id": "bad run", "run_valid": false, "ttl_seconds": 60, "single_use": false},
	})
	res := tokens.result with input as inp
	codes(res) == {"agent_unknown", "run_invalid"}
}

test_exec_ttl_capped if {
	inp := with_input({"tool": {"name": "shell.exec", "known": true, "class": "exec", "trust": "neutral", "base_risk": 0.9}})
	res := tokens.result with input as inp
	res.decision == "allow"
	res.max_ttl_seconds == 300
}

test_external_send_ttl_capped if {
	inp := with_input({"tool": {"name": "send_email", "known": true, "class": "external_send", "trust": "untrusted", "base_risk": 0.4}})
	res := tokens.result with input as inp
	res.max_ttl_seconds == 300
}

test_write_not_capped if {
	inp := with_input({"tool": {"name": "db.write", "known": true, "class": "write", "trust": "internal", "base_risk": 0.5}})
	res := tokens.result with input as inp
	res.decision == "allow"
	not "max_ttl_seconds" in object.keys(res)
}

test_smallest_cap_wins if {
	res := tokens.result with input as with_input({"tool": {"name": "shell.exec", "known": true, "class": "exec", "trust": "neutral", "base_risk": 0.9}})
		with data.aisecops.token_max_ttl_seconds as {"exec": 120, "external_send": 300}
	res.max_ttl_seconds == 120
}

test_namespace_unrestricted_by_default if {
	inp := with_input({"credential": {"kind": "jwt", "issuer": "i", "subject": "s", "namespace": "", "service_account": ""}})
	res := tokens.result with input as inp
	res.decision == "allow"
}

test_namespace_restricted_allows_listed if {
	res := tokens.result with input as base with data.aisecops.token_workload_namespaces as ["agents"]
	res.decision == "allow"
}

test_namespace_restricted_denies_others if {
	inp := with_input({"credential": {"kind": "jwt", "issuer": "i", "subject": "system:serviceaccount:other:demo-agent", "namespace": "other", "service_account": "demo-agent"}})
	res := tokens.result with input as inp with data.aisecops.token_workload_namespaces as ["agents"]
	res.decision == "deny"
	codes(res) == {"workload_namespace"}
}

# An empty input (nothing known) is a deny with reasons, never undefined.
test_empty_input_denied if {
	res := tokens.result with input as {}
	res.decision == "deny"
	count(res.reasons) > 0
}

test_result_keys if {
	res := tokens.result with input as base
	object.keys(res) == {"decision", "reasons"}
	every r in res.reasons {
		object.keys(r) == {"code", "message", "control_id"}
	}
}
