package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/revocation"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// auditEvents writes the audit records of what changes what a Check means
// (DESIGN §7): approvals decided, revocations, policy and routes versions,
// each a record of its own in the one chain. Text people wrote (why, run
// ids) is inspected like every agent-written string before it is written.
type auditEvents struct {
	sink   audit.Sink
	redact func(string) string
	now    func() time.Time
	log    *slog.Logger
}

func (e *auditEvents) record(r *audit.Record) error {
	r.TS, r.DecisionID = e.now().UTC(), eventID()
	if r.Reasons == nil {
		r.Reasons, r.ControlIDs, r.ContextProvenance = []audit.Reason{}, []string{}, []audit.Provenance{}
	}
	return e.sink.Write(r)
}

func eventID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "e_" + hex.EncodeToString(b[:])
}

// approval is httpapi.Config.OnDecision: written before the store changes,
// so a failure refuses the decision.
func (e *auditEvents) approval(_ context.Context, ap riskstore.Approval, by httpapi.Caller, outcome string) error {
	decision := "reject"
	if ap.Status == riskstore.ApprovalApproved {
		decision = "approve"
	}
	err := e.record(&audit.Record{Event: audit.EventApprovalDecided, ApprovalID: e.redact(ap.ID), Decision: decision, DecidedBy: by.Name,
		Why: e.redact(ap.Why), RunID: e.redact(ap.RunID), AgentID: ap.AgentID, Tool: ap.Tool, Binding: ap.Binding,
		Detail: map[string]string{"outcome": outcome, "decision_id": ap.DecisionID}})
	if err != nil {
		e.log.Error("audit write failed for an approval decision", "approval_id", ap.ID, "err", err)
	}
	return err
}

// revocation is the revocation handlers' OnRevoke.
func (e *auditEvents) revocation(_ context.Context, r revocation.Revoked) error {
	detail := map[string]string{}
	switch {
	case r.JTI != nil:
		detail["jti"] = e.redact(r.JTI.JTI)
		detail["until"] = r.JTI.ExpiresAt.UTC().Format(time.RFC3339)
	case r.Agent != nil:
		detail["agent_id"] = r.Agent.AgentID
		detail["before"] = r.Agent.RevokedBefore.UTC().Format(time.RFC3339)
	}
	err := e.record(&audit.Record{Event: audit.EventRevocation, DecidedBy: r.By, Why: e.redact(r.Why), Detail: detail})
	if err != nil {
		e.log.Error("audit write failed for a revocation (it is in effect)", "err", err)
	}
	return err
}

// policyChanged is policy.Engine.OnChange. The bundle is already serving; a
// failed write is logged (reverting the policy would not be safer).
func (e *auditEvents) policyChanged(from, to *policy.Bundle) {
	if err := e.record(&audit.Record{Event: audit.EventPolicyVersionChanged, PolicyVersion: to.Version(),
		Detail: map[string]string{"from": from.Version(), "hash": to.Hash(), "from_hash": from.Hash()}}); err != nil {
		e.log.Error("audit write failed for a policy change", "version", to.Version(), "err", err)
	}
}

// routesChanged is extauthz.Directory.OnChange.
func (e *auditEvents) routesChanged(from, to string) {
	if err := e.record(&audit.Record{Event: audit.EventRoutesVersionChanged, RouteVersion: to, Detail: map[string]string{"from": from}}); err != nil {
		e.log.Error("audit write failed for a routes change", "version", to, "err", err)
	}
}
