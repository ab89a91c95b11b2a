package revocation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
)

// maxRequestBytes bounds a POST /v1/revocations body.
const maxRequestBytes = 64 << 10

// maxWhy bounds the reason a revoker gives.
const maxWhy = 1024

// revokeRequest is a POST /v1/revocations body: exactly one of JTI and AgentID.
type revokeRequest struct {
	JTI       string    `json:"jti"`
	ExpiresAt time.Time `json:"expires_at"` // optional, with jti: the token's exp
	AgentID   string    `json:"agent_id"`
	Before    time.Time `json:"before"` // optional, with agent_id: default now
	Why       string    `json:"why"`    // optional: recorded in the audit log
}

// Revoked is one revocation made through the API, for the audit log.
type Revoked struct {
	JTI   *JTI   // set for a token revocation
	Agent *Agent // set for an agent revocation
	By    string // the authenticated caller
	Why   string
}

// OnRevoke records a revocation made through the API. The revocation is in
// effect before it is called (a revocation refused for want of an audit
// line would leave the token working); its error makes the answer a 503
// that says so.
type OnRevoke func(ctx context.Context, r Revoked) error

// Handlers are the revocation API, for the HTTP API to mount under the roles
// it decides (operator to list, admin to revoke):
//
//	POST /v1/revocations  {"jti": "…", "expires_at"?: RFC 3339, "why"?: "…"}
//	                      or {"agent_id": "…", "before"?: RFC 3339, "why"?: "…"}  → 201 with the entry
//	GET  /v1/revocations  → 200 List (file and API entries, each with its source)
//
// onRevoke, when set, records each revocation made (the audit log).
func (s *Set) Handlers(onRevoke OnRevoke) (list, revoke http.Handler) {
	return http.HandlerFunc(s.get), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.post(w, r, onRevoke) })
}

func (s *Set) get(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.List())
}

func (s *Set) post(w http.ResponseWriter, r *http.Request, onRevoke OnRevoke) {
	req, err := decodeRevoke(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	var entry any
	rev := Revoked{Why: req.Why}
	if c, ok := httpapi.CallerFrom(r.Context()); ok {
		rev.By = c.Name
	}
	if req.JTI != "" {
		var j JTI
		j, err = s.RevokeJTI(req.JTI, req.ExpiresAt)
		entry, rev.JTI = j, &j
	} else {
		var a Agent
		a, err = s.RevokeAgent(req.AgentID, req.Before)
		entry, rev.Agent = a, &a
	}
	switch {
	case errors.Is(err, ErrFull):
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the revocation list is full; add the entry to the revocation file")
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
	case onRevoke != nil && onRevoke(r.Context(), rev) != nil:
		s.opts.Logger.Error("revocation in effect but not audited", "by", rev.By)
		writeError(w, http.StatusServiceUnavailable, "audit_write_failed", "the revocation is in effect, but it could not be audited")
	default:
		writeJSON(w, http.StatusCreated, entry)
	}
}

func decodeRevoke(body io.Reader) (revokeRequest, error) {
	data, err := io.ReadAll(io.LimitReader(body, maxRequestBytes+1))
	if err != nil {
		return revokeRequest{}, errors.New("could not read the request body")
	}
	if len(data) > maxRequestBytes {
		return revokeRequest{}, errors.New("request body too large")
	}
	// Strict JSON first (no duplicate or case-variant keys, nothing trailing),
	// then exact key names: encoding/json matches names case-insensitively.
	if _, err := plan.CanonicalJSON(data); err != nil {
		return revokeRequest{}, errors.New("the body must be one JSON object without duplicate keys")
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil || keys == nil {
		return revokeRequest{}, errors.New("the body must be a JSON object")
	}
	for k := range keys {
		switch k {
		case "jti", "expires_at", "agent_id", "before", "why":
		default:
			return revokeRequest{}, errors.New("unknown field " + strconvQuote(k))
		}
	}
	var req revokeRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return revokeRequest{}, errors.New("invalid request: " + err.Error())
	}
	if dec.More() {
		return revokeRequest{}, errors.New("trailing data after the JSON object")
	}
	switch {
	case (req.JTI == "") == (req.AgentID == ""):
		return revokeRequest{}, errors.New("give exactly one of jti and agent_id")
	case req.JTI != "" && !req.Before.IsZero():
		return revokeRequest{}, errors.New("before goes with agent_id")
	case req.AgentID != "" && !req.ExpiresAt.IsZero():
		return revokeRequest{}, errors.New("expires_at goes with jti")
	case len(req.Why) > maxWhy:
		return revokeRequest{}, errors.New("why is longer than 1024 bytes")
	}
	return req, nil
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) { httpapi.WriteJSON(w, status, v) }

func writeError(w http.ResponseWriter, status int, code, msg string) {
	httpapi.WriteError(w, status, code, msg)
}
