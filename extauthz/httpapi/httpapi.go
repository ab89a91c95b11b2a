// Package httpapi owns the control HTTP listener (default :8181): /healthz,
// /readyz, /metrics and the /v1 API operators use (approvals, explain, and the
// routes other packages mount). Every endpoint but health and the token
// service needs a role (operator to read, approver to decide approvals, admin
// for everything); the package authenticates callers (auth.go) and translates
// HTTP to calls on the authz server and the stores. It decides nothing itself.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Explainer is the authz server as the explain endpoint sees it: it decides a
// CheckRequest without committing anything.
type Explainer interface {
	Explain(ctx context.Context, req *envoy_service_auth_v3.CheckRequest) extauthz.Body
}

// ApprovalStore is the approvals as the API uses them.
type ApprovalStore interface {
	GetApproval(ctx context.Context, id string) (riskstore.Approval, error)
	ListApprovals(ctx context.Context, status string) ([]riskstore.Approval, error)
	DecideApproval(ctx context.Context, id string, approve bool, by, why string, now time.Time) (riskstore.Approval, error)
}

// ReadyFunc reports nil when its component can serve.
type ReadyFunc func(ctx context.Context) error

// Route is a handler another package mounts, with the role it needs. A route
// without a role must say it authenticates its callers itself (SelfAuth: the
// token service, the public keys, the dashboard's pages, which send an
// anonymous browser to sign in): Handler refuses a route with neither, so a
// new endpoint cannot be public by omission.
type Route struct {
	Pattern  string
	Role     string
	SelfAuth bool
	Handler  http.Handler
}

// Config wires the API.
type Config struct {
	Explainer Explainer     // nil: no /v1/explain
	Approvals ApprovalStore // nil: no /v1/approvals
	Gatherer  prometheus.Gatherer
	Ready     map[string]ReadyFunc
	// Warnings are conditions an operator chose to run with (a volatile
	// Redis, plaintext listeners): /readyz repeats them while ready.
	Warnings map[string]string
	// Auth authenticates callers; nil refuses every endpoint that needs a role.
	Auth *Auth
	// OnDecision, when set, records every approval decision (in the audit
	// log) before the store changes: a the approval as decided, outcome
	// OutcomeDecided. An error refuses the decision, so no approval takes
	// effect unrecorded. Should the store then refuse the change (another
	// approver was first, or it is down), OnDecision is called again with
	// OutcomeNotApplied, so the record does not stand alone.
	OnDecision func(ctx context.Context, a riskstore.Approval, by Caller, outcome string) error
	Logger     *slog.Logger
	Clock      func() time.Time
	Routes     []Route
}

// maxBody bounds every request body the API reads.
const maxBody = 1 << 20

// Handler returns the API's handler.
func Handler(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Auth == nil {
		cfg.Auth = &Auth{}
	}
	a := &api{cfg: cfg}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", a.readyz)
	role := func(pattern, r string, h http.Handler) { mux.Handle(pattern, cfg.Auth.Require(r, h)) }
	if cfg.Gatherer != nil {
		role("GET /metrics", RoleOperator, promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	if cfg.Approvals != nil {
		role("GET /v1/approvals", RoleOperator, http.HandlerFunc(a.listApprovals))
		role("GET /v1/approvals/{id}", RoleOperator, http.HandlerFunc(a.getApproval))
		role("POST /v1/approvals/{id}/approve", RoleApprover, a.decide(true))
		role("POST /v1/approvals/{id}/reject", RoleApprover, a.decide(false))
	}
	if cfg.Explainer != nil {
		role("POST /v1/explain", RoleOperator, http.HandlerFunc(a.explain))
	}
	for _, rt := range cfg.Routes {
		switch {
		case rt.Role != "" && rt.SelfAuth:
			panic("httpapi: route " + rt.Pattern + " has a role and says it authenticates itself")
		case rt.Role != "":
			role(rt.Pattern, rt.Role, rt.Handler)
		case rt.SelfAuth:
			mux.Handle(rt.Pattern, rt.Handler)
		default:
			panic("httpapi: route " + rt.Pattern + " has no role and does not say it authenticates its callers itself")
		}
	}
	return mux
}

type api struct{ cfg Config }

// WriteJSON answers with v as indented JSON; every handler on :8181 uses it.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// Error is the body of every error answer: {"error": {"code", "message"}}.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// WriteError answers {"error": {"code": code, "message": msg}}.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, map[string]Error{"error": {Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) { WriteJSON(w, status, v) }

func writeError(w http.ResponseWriter, status int, code, msg string) {
	WriteError(w, status, code, msg)
}

func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	problems := map[string]string{}
	for name, f := range a.cfg.Ready {
		if err := f(ctx); err != nil {
			problems[name] = err.Error()
		}
	}
	body := map[string]any{"ready": len(problems) == 0}
	if len(a.cfg.Warnings) > 0 {
		body["warnings"] = a.cfg.Warnings
	}
	if len(problems) > 0 {
		body["problems"] = problems
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *api) listApprovals(w http.ResponseWriter, r *http.Request) {
	list, err := a.cfg.Approvals.ListApprovals(r.Context(), r.URL.Query().Get("status"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "approval store unavailable")
		return
	}
	if list == nil {
		list = []riskstore.Approval{}
	}
	for i := range list {
		list[i] = forCaller(r, list[i])
	}
	writeJSON(w, http.StatusOK, map[string]any{"approvals": list})
}

func (a *api) getApproval(w http.ResponseWriter, r *http.Request) {
	ap, err := a.cfg.Approvals.GetApproval(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, riskstore.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no such approval")
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "unavailable", "approval store unavailable")
	default:
		writeJSON(w, http.StatusOK, forCaller(r, ap))
	}
}

// Outcomes given to Config.OnDecision.
const (
	OutcomeDecided    = "decided"
	OutcomeNotApplied = "not_applied"
)

// forCaller is ap as the caller may see it: the held call's detail (argument
// values, masked where a secret matched) is for approvers only.
func forCaller(r *http.Request, ap riskstore.Approval) riskstore.Approval {
	if c, _ := CallerFrom(r.Context()); !c.Has(RoleApprover) {
		ap.Detail = nil
	}
	return ap
}

// decide approves or rejects. Who decided is the authenticated caller, never
// something the body says; why is the body's. With OnDecision the decision
// is recorded first (write-ahead) and refused if it cannot be.
func (a *api) decide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Why string `json:"why"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil || strings.TrimSpace(in.Why) == "" || len(in.Why) > 1024 {
			writeError(w, http.StatusBadRequest, "bad_request", `body must be {"why": "<reason, at most 1024 bytes>"}`)
			return
		}
		by, _ := CallerFrom(r.Context())
		id, now := r.PathValue("id"), a.cfg.Clock()
		var intended riskstore.Approval
		if a.cfg.OnDecision != nil {
			cur, err := a.cfg.Approvals.GetApproval(r.Context(), id)
			switch {
			case errors.Is(err, riskstore.ErrNotFound):
				writeError(w, http.StatusNotFound, "not_found", "no such approval")
				return
			case err != nil:
				writeError(w, http.StatusServiceUnavailable, "unavailable", "approval store unavailable")
				return
			case cur.Status != riskstore.ApprovalPending:
				writeJSON(w, http.StatusConflict, map[string]any{"error": Error{Code: "conflict", Message: "approval is not pending"}, "approval": cur})
				return
			}
			intended = cur
			intended.Status, intended.DecidedAt, intended.DecidedBy, intended.Why = riskstore.ApprovalRejected, now, by.Name, in.Why
			if approve {
				intended.Status = riskstore.ApprovalApproved
			}
			if err := a.cfg.OnDecision(r.Context(), intended, by, OutcomeDecided); err != nil {
				a.cfg.Logger.Error("approval decision could not be audited; refused", "approval_id", id, "err", err)
				writeError(w, http.StatusServiceUnavailable, "audit_write_failed", "the decision could not be audited, so it was not made")
				return
			}
		}
		ap, err := a.cfg.Approvals.DecideApproval(r.Context(), id, approve, by.Name, in.Why, now)
		if err != nil && a.cfg.OnDecision != nil {
			if aerr := a.cfg.OnDecision(r.Context(), intended, by, OutcomeNotApplied); aerr != nil {
				a.cfg.Logger.Error("an approval decision the store refused could not be audited as not applied", "approval_id", id, "err", aerr)
			}
		}
		switch {
		case errors.Is(err, riskstore.ErrNotFound):
			writeError(w, http.StatusNotFound, "not_found", "no such approval")
		case errors.Is(err, riskstore.ErrConflict):
			writeJSON(w, http.StatusConflict, map[string]any{"error": Error{Code: "conflict", Message: "approval is not pending"}, "approval": ap})
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, "unavailable", "approval store unavailable")
		default:
			a.cfg.Logger.Info("approval decided", "approval_id", ap.ID, "status", ap.Status, "by", ap.DecidedBy)
			writeJSON(w, http.StatusOK, ap)
		}
	}
}

// explain decides a CheckRequest (protojson, as Envoy would send it) without
// committing anything and answers the decision with its full trace. The
// route comes from the routes file, never from the request's context
// extensions; the explain and dry-run headers play no part.
func (a *api) explain(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(data) > maxBody {
		writeError(w, http.StatusBadRequest, "bad_request", "body must be a CheckRequest in JSON of at most 1 MiB")
		return
	}
	req := &envoy_service_auth_v3.CheckRequest{}
	if err := protojson.Unmarshal(data, req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "body is not a CheckRequest in JSON")
		return
	}
	if req.GetAttributes().GetRequest().GetHttp() == nil {
		writeError(w, http.StatusBadRequest, "bad_request", "attributes.request.http is required")
		return
	}
	writeJSON(w, http.StatusOK, a.cfg.Explainer.Explain(r.Context(), req))
}
