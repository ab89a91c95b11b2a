package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/replay"
)

// ReplayConfig wires POST /v1/replay/diff: the server's recorded Checks
// decided again under a candidate bundle sent in the request.
type ReplayConfig struct {
	// Records reads the server's audit records with from <= ts < to (zero:
	// open), at most limit, returning audit.ErrTooMany beyond.
	Records func(from, to time.Time, limit int) ([]audit.Record, error)
	// Opener opens the records' sealed arguments (the seal key ring).
	Opener extauthz.Opener
	// Directory turns a candidate routes file into a directory; nil refuses
	// candidates with a routes file.
	Directory func(raw []byte) (*extauthz.Directory, error)
	// Timeout bounds one replay (default 60s).
	Timeout time.Duration
}

// Replay request bounds. Records are held in memory while replayed (a few KB
// each, with their sealed input), so a replay is bounded to tens of MB.
const (
	defaultReplayLimit = 5000
	maxReplayLimit     = 20000
	maxPolicyFiles     = 64
)

var policyFileName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.rego$|^data\.json$`)

// replayRequest is the body of POST /v1/replay/diff.
type replayRequest struct {
	// Policies is the candidate bundle: file name → content (*.rego and
	// data.json, no directories).
	Policies map[string]string `json:"policies"`
	// Config is a candidate routes and agents file (YAML), or empty to keep
	// the routes and agents as recorded.
	Config string    `json:"config"`
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Limit  int       `json:"limit"`
}

// ReplayHandler serves POST /v1/replay/diff. It decides and answers; it never
// writes, commits or requests anything. One replay runs at a time per
// server (429 replay_busy otherwise), under a deadline, and the candidate is
// compiled with the served bundles' restricted capabilities (no network, no
// clock, no randomness).
func ReplayHandler(cfg ReplayConfig) http.Handler {
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	busy := make(chan struct{}, 1)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req replayRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || dec.Decode(new(json.RawMessage)) != io.EOF {
			writeError(w, http.StatusBadRequest, "bad_request", "the body must be one JSON object {policies, config, from, to, limit}")
			return
		}
		if msg := checkCandidate(req.Policies); msg != "" {
			writeError(w, http.StatusBadRequest, "bad_policies", msg)
			return
		}
		switch {
		case req.Limit == 0:
			req.Limit = defaultReplayLimit
		case req.Limit < 0 || req.Limit > maxReplayLimit:
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit must be between 1 and %d", maxReplayLimit))
			return
		}
		if !req.To.IsZero() && !req.From.Before(req.To) {
			writeError(w, http.StatusBadRequest, "bad_request", "from must be before to")
			return
		}
		select {
		case busy <- struct{}{}:
			defer func() { <-busy }()
		default:
			writeError(w, http.StatusTooManyRequests, "replay_busy", "another replay is running on this server")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), cfg.Timeout)
		defer cancel()
		b, err := loadCandidate(ctx, req.Policies)
		if err != nil {
			writeError(w, http.StatusUnprocessableEntity, "bad_policies", "the candidate bundle does not compile: "+err.Error())
			return
		}
		opts := replay.Options{Bundle: b, Opener: cfg.Opener}
		if req.Config != "" {
			if cfg.Directory == nil {
				writeError(w, http.StatusBadRequest, "bad_request", "this server does not replay candidate routes files")
				return
			}
			if opts.Directory, err = cfg.Directory([]byte(req.Config)); err != nil {
				writeError(w, http.StatusUnprocessableEntity, "bad_config", "the candidate routes file: "+err.Error())
				return
			}
		}
		recs, err := cfg.Records(req.From, req.To, req.Limit)
		switch {
		case errors.Is(err, audit.ErrTooMany):
			writeError(w, http.StatusUnprocessableEntity, "range_too_large", fmt.Sprintf("more than %d records in the range: narrow from/to or raise limit", req.Limit))
			return
		case err != nil:
			writeError(w, http.StatusInternalServerError, "audit_unreadable", "the audit log could not be read")
			return
		}
		rep, err := replay.Diff(ctx, recs, opts)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "replay_timeout", "the replay did not finish in time: narrow from/to")
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
}

// checkCandidate checks the candidate's file names and count; the message
// says what is wrong.
func checkCandidate(p map[string]string) string {
	if len(p) == 0 {
		return "policies is empty: send the candidate bundle's files"
	}
	if len(p) > maxPolicyFiles {
		return fmt.Sprintf("at most %d policy files", maxPolicyFiles)
	}
	for name := range p {
		if !policyFileName.MatchString(name) {
			return fmt.Sprintf("policy file name %q: want NAME.rego or data.json, no directories", truncate(name, 64))
		}
	}
	return ""
}

// loadCandidate compiles the candidate's files (checked names) from a
// private temporary directory, removed after.
func loadCandidate(ctx context.Context, p map[string]string) (*policy.Bundle, error) {
	dir, err := os.MkdirTemp("", "aisecops-candidate-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for name, body := range p {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	var fsys fs.FS = os.DirFS(dir)
	return policy.Load(ctx, fsys)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
