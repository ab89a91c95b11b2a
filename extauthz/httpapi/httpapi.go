// Package httpapi owns the control HTTP listener (default :8181): /healthz,
// /readyz, /metrics and the /v1 API operators use (approvals, explain). It
// translates HTTP to calls on the authz server and the stores; it decides
// nothing itself. Mutating endpoints require the admin bearer token.
package httpapi

import (
	"context"
	"crypto/subtle"
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

// ReadyFunc reports nil when its component can serve.
type ReadyFunc func(ctx context.Context) error

// Config wires the API.
type Config struct {
	Explainer Explainer
	Approvals riskstore.Approvals
	Gatherer  prometheus.Gatherer
	Ready     map[string]ReadyFunc
	// AdminToken guards mutating endpoints (approve, reject). Empty disables them.
	AdminToken string
	Logger     *slog.Logger
	Clock      func() time.Time
	// Extra mounts further handlers (xDS status and rollout) under their
	// patterns; POST ones need the admin token.
	Extra map[string]http.Handler
	// Public mounts handlers that authenticate their callers themselves (the
	// token service checks workload credentials).
	Public map[string]http.Handler
	// Warnings are shown by /readyz without making it fail (plaintext
	// listeners off loopback, allowed by --insecure-listeners).
	Warnings map[string]string
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
	a := &api{cfg: cfg}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", a.readyz)
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/approvals", a.admin(a.listApprovals))
	mux.HandleFunc("GET /v1/approvals/{id}", a.admin(a.getApproval))
	mux.HandleFunc("POST /v1/approvals/{id}/approve", a.admin(a.decide(true)))
	mux.HandleFunc("POST /v1/approvals/{id}/reject", a.admin(a.decide(false)))
	mux.HandleFunc("POST /v1/explain", a.admin(a.explain))
	for pattern, h := range cfg.Extra {
		if strings.HasPrefix(pattern, "POST ") {
			h = RequireAdmin(cfg.AdminToken, h) // every mutating extra is an admin action
		}
		mux.Handle(pattern, h)
	}
	for pattern, h := range cfg.Public {
		mux.Handle(pattern, h)
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

// WriteError answers {"error": msg}.
func WriteError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) { WriteJSON(w, status, v) }

func writeError(w http.ResponseWriter, status int, msg string) { WriteError(w, status, msg) }

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

// RequireAdmin lets a request through to next only with the admin bearer
// token, compared in constant time. An empty token refuses everyone.
func RequireAdmin(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if token == "" || !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			writeError(w, http.StatusUnauthorized, "this endpoint needs the admin token (Authorization: Bearer …)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *api) admin(next http.HandlerFunc) http.HandlerFunc {
	return RequireAdmin(a.cfg.AdminToken, next).ServeHTTP
}

func (a *api) listApprovals(w http.ResponseWriter, r *http.Request) {
	list, err := a.cfg.Approvals.ListApprovals(r.Context(), r.URL.Query().Get("status"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "approval store unavailable")
		return
	}
	if list == nil {
		list = []riskstore.Approval{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"approvals": list})
}

func (a *api) getApproval(w http.ResponseWriter, r *http.Request) {
	ap, err := a.cfg.Approvals.GetApproval(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, riskstore.ErrNotFound):
		writeError(w, http.StatusNotFound, "no such approval")
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "approval store unavailable")
	default:
		writeJSON(w, http.StatusOK, ap)
	}
}

func (a *api) decide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			By  string `json:"by"`
			Why string `json:"why"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil || strings.TrimSpace(in.By) == "" {
			writeError(w, http.StatusBadRequest, `body must be {"by": "<who>", "why": "<reason>"}`)
			return
		}
		ap, err := a.cfg.Approvals.DecideApproval(r.Context(), r.PathValue("id"), approve, in.By, in.Why, a.cfg.Clock())
		switch {
		case errors.Is(err, riskstore.ErrNotFound):
			writeError(w, http.StatusNotFound, "no such approval")
		case errors.Is(err, riskstore.ErrConflict):
			writeJSON(w, http.StatusConflict, map[string]any{"error": "approval is not pending", "approval": ap})
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, "approval store unavailable")
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
		writeError(w, http.StatusBadRequest, "body must be a CheckRequest in JSON of at most 1 MiB")
		return
	}
	req := &envoy_service_auth_v3.CheckRequest{}
	if err := protojson.Unmarshal(data, req); err != nil {
		writeError(w, http.StatusBadRequest, "body is not a CheckRequest: "+err.Error())
		return
	}
	if req.GetAttributes().GetRequest().GetHttp() == nil {
		writeError(w, http.StatusBadRequest, "attributes.request.http is required")
		return
	}
	writeJSON(w, http.StatusOK, a.cfg.Explainer.Explain(r.Context(), req))
}
