# Unit tests for authz.rego: every rule on its deny (or approval) path and on
# its allow path, and the worked example of the AISecOps specification's
# risk aggregation model (v1.0, section 8).
package aisecops.authz_test

import rego.v1

import data.aisecops.authz

# A known, authenticated agent reading internal data at low risk: allowed.
base := {
	"time": {"now_ns": 1767225600000000000, "rfc3339": "2026-01-01T00:00:00Z"},
	"request": {"id": "req-1", "method": "POST", "host": "db.internal", "path": "/query", "dry_run": false, "explain": false},
	"route": {"tool": "db.read", "tool_class": "read", "base_risk": 0.2, "trust": "internal", "cost": 0.01, "route_version": "r1"},
	"agent": {
		"id": "demo-agent", "known": true, "authenticated": true, "tool_allowed": true,
		"allowed_tools": ["db.read", "db.write", "send_email", "shell.exec", "docs.search", "llm.openai"],
		"approval_threshold": 1.5, "halt_threshold": 2.0,
	},
	"plan": {"source": "plan", "tool": "db.read", "arguments": {"table": "customers"}, "arguments_hash": "h", "binding": "p", "trace_id": "t", "run_id": "run-1", "protocol": false},
	"token": {"present": true, "jti": "jti-1", "scope": "crm", "policy_version": "v1.0", "run_id": "run-1"},
	"provenance": [],
	"untrusted_context": false,
	"risk": {"r_step": 0.2, "e": 1.0, "t": 0.5, "b": 1.0, "step": 0.1, "total_before": 0, "total": 0.1},
	"budget": {"consumption": {"max_tool_calls": 0.02}, "exceeded": ""},
	"run": {"id": "run-1", "tool_calls": 0, "write_operations": 0, "cost": 0, "facts": []},
	"approval": {"present": false, "valid": false},
	"findings": [],
}

send_email := {
	"route": {"tool": "send_email", "tool_class": "external_send", "base_risk": 0.4, "trust": "untrusted", "cost": 0.02},
	"plan": {"tool": "send_email"},
}

shell_exec := {
	"route": {"tool": "shell.exec", "tool_class": "exec", "base_risk": 0.9, "trust": "neutral", "cost": 0},
	"plan": {"tool": "shell.exec"},
}

db_write := {
	"route": {"tool": "db.write", "tool_class": "write", "base_risk": 0.5, "trust": "internal", "cost": 0.01},
	"plan": {"tool": "db.write"},
}

llm := {
	"route": {"tool": "llm.openai", "tool_class": "llm", "base_risk": 0.1, "trust": "untrusted", "cost": 0.05},
	"plan": {"source": "llm", "tool": "llm.openai"},
}

# Sticky run facts, as the Go side records them (package risk).
internal_read_fact := "step:read:internal"

untrusted_fact := "context:untrusted"

with_input(patch) := object.union(base, patch)

# derive adds the facts the Go side computes from the findings and the run's
# window (finding_classes, run.tainted, run.read_internal), exactly as
# production inputs carry them.
derive(inp) := object.union(inp, {
	"finding_classes": {f.class: true | some f in object.get(inp, "findings", [])},
	"run": object.union(object.get(inp, "run", {}), {
		"tainted": untrusted_fact in object.get(inp, ["run", "facts"], []),
		"read_internal": internal_read_fact in object.get(inp, ["run", "facts"], []),
	}),
})

codes(res) := {r.code | some r in res.reasons}

# ---- shape and defaults ----------------------------------------------------

test_base_allowed if {
	res := authz.result with input as derive(base)
	res.decision == "allow"
	res.reasons == [{"code": "allowed", "message": "allowed", "control_id": "AIS-EXE-01"}]
	res.obligations == {}
}

test_empty_input_denied if {
	res := authz.result with input as derive({})
	res.decision == "deny"
	"agent_unknown" in codes(res)
	"route_unconfigured" in codes(res)
}

test_every_reason_well_formed if {
	inp := with_input(object.union(send_email, {
		"untrusted_context": true,
		"findings": [{"class": "secret"}, {"class": "destination"}, {"class": "injection"}],
		"budget": {"exceeded": "max_cost"},
		"risk": {"total": 5.0},
	}))
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	count(res.reasons) == 6
	every r in res.reasons {
		is_string(r.code)
		r.code != ""
		is_string(r.message)
		startswith(r.control_id, "AIS-")
	}
}

test_unknown_tool_class_denied if {
	res := authz.result with input as derive(with_input({"route": {"tool_class": "teleport"}}))
	res.decision == "deny"
	codes(res) == {"route_unconfigured"}
}

# ---- identity and capability -----------------------------------------------

test_agent_unknown_denied if {
	res := authz.result with input as derive(with_input({"agent": {"known": false}}))
	res.decision == "deny"
	"agent_unknown" in codes(res)
}

test_token_missing_denied if {
	res := authz.result with input as derive(with_input({"token": {"present": false}}))
	res.decision == "deny"
	codes(res) == {"token_missing"}
}

# Identity comes from a verified token on model calls too: no token, no call.
test_token_missing_llm_denied if {
	inp := object.union(with_input(llm), {"token": {"present": false}, "agent": {"authenticated": false}})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	"token_missing" in codes(res)
}

test_unauthenticated_denied if {
	res := authz.result with input as derive(with_input({"agent": {"authenticated": false}}))
	res.decision == "deny"
	codes(res) == {"agent_unauthenticated"}
}

test_token_policy_version_denied if {
	res := authz.result with input as derive(with_input({"token": {"policy_version": "v9"}}))
	res.decision == "deny"
	codes(res) == {"token_policy_version"}
}

test_token_policy_version_v01_allowed if {
	res := authz.result with input as derive(with_input({"token": {"policy_version": "v0.1"}}))
	res.decision == "allow"
}

# ---- 3.2 tool abuse --------------------------------------------------------

test_tool_not_allowed_flag_denied if {
	res := authz.result with input as derive(with_input({"agent": {"tool_allowed": false}}))
	res.decision == "deny"
	codes(res) == {"tool_not_allowed"}
}

test_tool_not_in_list_denied if {
	res := authz.result with input as derive(with_input({"agent": {"allowed_tools": ["db.write"]}}))
	res.decision == "deny"
	codes(res) == {"tool_not_allowed"}
}

test_exec_after_internal_read_denied if {
	inp := object.union(with_input(shell_exec), {"run": {"facts": [internal_read_fact]}})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	codes(res) == {"exec_after_sensitive_read"}
}

test_exec_after_neutral_read_allowed if {
	inp := object.union(with_input(shell_exec), {"run": {"facts": ["step:read:neutral"]}})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
}

test_exec_fresh_run_allowed if {
	res := authz.result with input as derive(with_input(shell_exec))
	res.decision == "allow"
	res.obligations == {"consume_jti": true}
}

# ---- 3.1 prompt injection --------------------------------------------------

test_untrusted_context_external_send_denied if {
	inp := object.union(with_input(send_email), {
		"untrusted_context": true,
		"provenance": [{"source_type": "web", "source_name": "kb.example.net", "trust_level": "untrusted"}],
	})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	codes(res) == {"untrusted_context_external_send"}
	res.reasons[0].control_id == "AIS-CTX-01"
}

test_untrusted_context_exec_denied if {
	res := authz.result with input as derive(object.union(with_input(shell_exec), {"untrusted_context": true}))
	res.decision == "deny"
	codes(res) == {"untrusted_context_external_send"}
}

test_untrusted_context_read_allowed if {
	res := authz.result with input as derive(with_input({"untrusted_context": true}))
	res.decision == "allow"
}

test_trusted_context_external_send_allowed if {
	res := authz.result with input as derive(with_input(send_email))
	res.decision == "allow"
}

test_injection_on_llm_denied if {
	res := authz.result with input as derive(object.union(with_input(llm), {"findings": [{"detector": "ignore_previous", "class": "injection"}]}))
	res.decision == "deny"
	codes(res) == {"injection_detected"}
}

test_injection_on_external_send_denied if {
	res := authz.result with input as derive(object.union(with_input(send_email), {"findings": [{"class": "injection"}]}))
	res.decision == "deny"
	codes(res) == {"injection_detected"}
}

test_injection_on_write_needs_approval if {
	res := authz.result with input as derive(object.union(with_input(db_write), {"findings": [{"class": "injection"}]}))
	res.decision == "require_approval"
	codes(res) == {"injection_suspected"}
}

test_llm_clean_allowed if {
	res := authz.result with input as derive(with_input(llm))
	res.decision == "allow"
}

# ---- 3.3 memory poisoning --------------------------------------------------

poisoned_memory := {"source_type": "vector_memory", "source_name": "research-notes", "trust_level": "unverified"}

test_untrusted_memory_write_needs_approval if {
	res := authz.result with input as derive(object.union(with_input(db_write), {"provenance": [poisoned_memory]}))
	res.decision == "require_approval"
	codes(res) == {"untrusted_memory"}
	res.reasons[0].control_id == "AIS-CTX-02"
}

test_untrusted_memory_external_send_denied if {
	# Go also marks the context untrusted, and the deny wins.
	inp := object.union(with_input(send_email), {"provenance": [poisoned_memory], "untrusted_context": true})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	codes(res) == {"untrusted_context_external_send"}
}

test_untrusted_memory_read_allowed if {
	res := authz.result with input as derive(with_input({"provenance": [poisoned_memory]}))
	res.decision == "allow"
}

test_trusted_memory_write_allowed if {
	mem := {"source_type": "memory", "source_name": "notes", "trust_level": "internal"}
	res := authz.result with input as derive(object.union(with_input(db_write), {"provenance": [mem]}))
	res.decision == "allow"
}

# ---- 3.4 chain escalation --------------------------------------------------

test_risk_halt_denied if {
	res := authz.result with input as derive(with_input({"risk": {"total": 2.01}}))
	res.decision == "deny"
	codes(res) == {"risk_halt"}
}

test_risk_at_halt_threshold_needs_approval if {
	# Strictly greater: a total equal to the halt threshold is not halted.
	res := authz.result with input as derive(with_input({"risk": {"total": 2.0}}))
	res.decision == "require_approval"
	codes(res) == {"approval_required"}
}

test_risk_at_approval_threshold_allowed if {
	res := authz.result with input as derive(with_input({"risk": {"total": 1.5}}))
	res.decision == "allow"
}

test_risk_approval_required if {
	res := authz.result with input as derive(with_input({"risk": {"total": 1.6}}))
	res.decision == "require_approval"
	res.reasons == [{
		"code": "approval_required",
		"message": "the run's cumulative risk is over the approval threshold",
		"control_id": "AIS-RSK-01",
	}]
	res.obligations == {}
}

test_valid_approval_allows_and_is_consumed if {
	inp := with_input({"risk": {"total": 1.6}, "approval": {"id": "apr-1", "present": true, "valid": true, "status": "approved"}})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
	res.obligations == {"approval_consumed": true}
	res.reasons[0].code == "allowed"
}

test_invalid_approval_still_required if {
	inp := with_input({"risk": {"total": 1.6}, "approval": {"id": "apr-1", "present": true, "valid": false, "status": "pending"}})
	res := authz.result with input as derive(inp)
	res.decision == "require_approval"
}

test_valid_approval_without_id_not_accepted if {
	inp := with_input({"risk": {"total": 1.6}, "approval": {"present": true, "valid": true}})
	res := authz.result with input as derive(inp)
	res.decision == "require_approval"
}

test_valid_approval_does_not_override_deny if {
	inp := with_input({"risk": {"total": 2.5}, "approval": {"id": "apr-1", "present": true, "valid": true}})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	codes(res) == {"risk_halt"}
}

test_valid_approval_without_need_not_consumed if {
	inp := with_input({"approval": {"id": "apr-1", "present": true, "valid": true}})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
	res.obligations == {}
}

test_budget_exceeded_denied if {
	res := authz.result with input as derive(with_input({"budget": {"exceeded": "max_tool_calls"}}))
	res.decision == "deny"
	codes(res) == {"budget_exceeded"}
}

# The specification's worked example (v1.0, section 8) with its approval
# threshold of 1.2. Risk is compared including the step being decided: 0.10,
# 1.06, 1.335, so the approval falls on step 3, not step 2 as the
# specification's prose says (its own numbers give 1.06 after step 2).
worked_example_agent := {"agent": {"approval_threshold": 1.2, "halt_threshold": 2.0}}

test_worked_example_step1_db_read_allowed if {
	inp := object.union(with_input(worked_example_agent), {"risk": {"r_step": 0.2, "e": 1.0, "t": 0.5, "b": 1.0, "step": 0.1, "total_before": 0, "total": 0.1}})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
}

test_worked_example_step2_send_email_allowed if {
	inp := object.union(object.union(with_input(worked_example_agent), send_email), {
		"risk": {"r_step": 0.4, "e": 1.2, "t": 2.0, "b": 1.0, "step": 0.96, "total_before": 0.1, "total": 1.06, "escalations": ["external_send_after_internal_read"]},
		"run": {"tool_calls": 1, "facts": [internal_read_fact]},
	})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
}

test_worked_example_step3_db_write_needs_approval if {
	inp := object.union(object.union(with_input(worked_example_agent), db_write), {
		"risk": {"r_step": 0.5, "e": 1.0, "t": 0.5, "b": 1.1, "step": 0.275, "total_before": 1.06, "total": 1.335},
		"run": {"tool_calls": 2, "facts": [internal_read_fact, "step:external_send:untrusted"]},
	})
	res := authz.result with input as derive(inp)
	res.decision == "require_approval"
	codes(res) == {"approval_required"}
}

test_worked_example_chain_default_thresholds_allowed if {
	inp := with_input({"risk": {"total": 1.335}})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
}

# ---- 3.5 data exfiltration -------------------------------------------------

secret := {"detector": "aws_access_key", "location": "body.arguments.text", "count": 1, "hash": "h", "class": "secret"}

pii := {"detector": "email", "location": "body.arguments.text", "count": 1, "hash": "h", "class": "pii"}

test_secret_external_send_denied if {
	res := authz.result with input as derive(object.union(with_input(send_email), {"findings": [secret]}))
	res.decision == "deny"
	codes(res) == {"secret_egress"}
	res.reasons[0].control_id == "AIS-EXE-01"
}

test_secret_llm_external_denied if {
	res := authz.result with input as derive(object.union(with_input(llm), {"findings": [secret]}))
	res.decision == "deny"
	codes(res) == {"secret_egress"}
}

test_secret_llm_internal_allowed if {
	inp := object.union(with_input(llm), {"route": {"trust": "internal"}, "findings": [secret]})
	res := authz.result with input as derive(inp)
	res.decision == "allow"
}

test_secret_untrusted_read_denied if {
	inp := with_input({"route": {"tool": "db.read", "tool_class": "read", "trust": "untrusted"}, "findings": [secret]})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	codes(res) == {"secret_egress"}
}

test_secret_internal_write_allowed if {
	res := authz.result with input as derive(object.union(with_input(db_write), {"findings": [secret]}))
	res.decision == "allow"
}

test_pii_external_send_needs_approval if {
	res := authz.result with input as derive(object.union(with_input(send_email), {"findings": [pii]}))
	res.decision == "require_approval"
	codes(res) == {"pii_egress"}
}

test_pii_internal_write_allowed if {
	res := authz.result with input as derive(object.union(with_input(db_write), {"findings": [pii]}))
	res.decision == "allow"
}

test_destination_blocked_denied if {
	dest := {"detector": "destination_allowlist", "location": "body.arguments.to", "count": 1, "hash": "h", "class": "destination"}
	res := authz.result with input as derive(object.union(with_input(send_email), {"findings": [dest]}))
	res.decision == "deny"
	codes(res) == {"destination_blocked"}
}

test_deny_wins_over_approval if {
	res := authz.result with input as derive(object.union(with_input(send_email), {"findings": [pii, secret]}))
	res.decision == "deny"
	codes(res) == {"secret_egress"}
}

# ---- data for the Go side --------------------------------------------------

test_escalation_data_shape if {
	some r in data.aisecops.escalation
	r.name == "external_send_after_internal_read"
	r.e == 1.2
	some s in data.aisecops.escalation
	s.name == "exec_after_internal_read"
	s.e == 2.0
	data.aisecops.policy_version in data.aisecops.accepted_policy_versions
}

# ---- sensitivity, size and tainted runs -----------------------------------

sensitive := {"detector": "contract_terms", "location": "body", "count": 1, "hash": "", "class": "sensitive"}

oversized := {"detector": "payload_size", "location": "body", "count": 1, "hash": "", "class": "size"}

test_contract_terms_to_external_denied if {
	res := authz.result with input as derive(object.union(with_input(send_email), {"findings": [sensitive]}))
	res.decision == "deny"
	codes(res) == {"sensitive_egress"}
}

test_contract_terms_internal_write_allowed if {
	res := authz.result with input as derive(object.union(with_input(db_write), {"findings": [sensitive]}))
	res.decision == "allow"
}

test_oversized_payload_needs_approval if {
	res := authz.result with input as derive(object.union(base, {"findings": [oversized]}))
	res.decision == "require_approval"
	codes(res) == {"payload_size"}
}

test_external_send_after_untrusted_step_denied if {
	inp := object.union(with_input(send_email), {"run": {"facts": ["step:llm:untrusted", untrusted_fact]}})
	res := authz.result with input as derive(inp)
	res.decision == "deny"
	"tainted_run_external_send" in codes(res)
}

test_external_send_after_clean_steps_allowed if {
	inp := object.union(with_input(send_email), {"run": {"facts": [internal_read_fact]}})
	res := authz.result with input as derive(inp)
	not "tainted_run_external_send" in codes(res)
}
