package evidence

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
)

// Bounds of GET /v1/evidence: the range (default the last DefaultRange) and
// one export at a time, since each reads the whole log twice.
const (
	DefaultRange = 24 * time.Hour
	MaxRange     = 31 * 24 * time.Hour
)

// Source is the server's own audit log and its keys.
type Source struct {
	Path   string // the live log; its rotated files are found beside it
	Keys   audit.VerifyKeys
	Signer ed25519.PrivateKey
	Clock  func() time.Time
}

// Routes is GET /v1/evidence?from=&to=, for the operator role: the signed
// evidence file of the range, streamed as application/x-ndjson.
func Routes(src Source) []httpapi.Route {
	if src.Clock == nil {
		src.Clock = time.Now
	}
	h := &handler{src: src, busy: make(chan struct{}, 1)}
	return []httpapi.Route{{Pattern: "GET /v1/evidence", Role: httpapi.RoleOperator, Handler: h}}
}

type handler struct {
	src  Source
	busy chan struct{}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from, to, msg := h.rangeOf(r)
	if msg != "" {
		httpapi.WriteError(w, http.StatusBadRequest, "bad_request", msg)
		return
	}
	select {
	case h.busy <- struct{}{}:
		defer func() { <-h.busy }()
	default:
		w.Header().Set("Retry-After", "5")
		httpapi.WriteError(w, http.StatusTooManyRequests, "busy", "an evidence export is already running; retry when it ends")
		return
	}
	files, err := audit.Files(h.src.Path)
	if err != nil {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the audit log cannot be read")
		return
	}
	lw := &lazyWriter{w: w, name: fmt.Sprintf("aisecops-evidence-%s-%s.jsonl", from.UTC().Format("20060102T150405Z"), to.UTC().Format("20060102T150405Z"))}
	_, err = Export(lw, Options{Files: files, Keys: h.src.Keys, Signer: h.src.Signer, From: from, To: to, Now: h.src.Clock()})
	switch {
	case err == nil:
	case lw.started:
		// The file is partly sent: end the response broken, so no client
		// takes it for a whole (it would lack its signature anyway).
		panic(http.ErrAbortHandler)
	case errors.Is(err, ErrTooLarge):
		httpapi.WriteError(w, http.StatusRequestEntityTooLarge, "range_too_large",
			fmt.Sprintf("the range holds more than %d records or %d MiB: narrow from and to", MaxRecords, MaxBytes>>20))
	default:
		httpapi.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the evidence could not be exported")
	}
}

// rangeOf reads from and to (RFC 3339, both optional, nothing else).
func (h *handler) rangeOf(r *http.Request) (from, to time.Time, msg string) {
	if len(r.URL.RawQuery) > 512 {
		return from, to, "query string too long"
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return from, to, "query string cannot be parsed"
	}
	for k, v := range q {
		if !slices.Contains([]string{"from", "to"}, k) || len(v) != 1 {
			return from, to, "only from and to, once each, are accepted"
		}
	}
	to = h.src.Clock()
	if s := q.Get("to"); s != "" {
		if to, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return from, to, "to must be an RFC 3339 time"
		}
	}
	from = to.Add(-DefaultRange)
	if s := q.Get("from"); s != "" {
		if from, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return from, to, "from must be an RFC 3339 time"
		}
	}
	switch {
	case !from.Before(to):
		return from, to, "from must be before to"
	case to.Sub(from) > MaxRange:
		return from, to, "the range may span at most 31 days; export it in parts"
	}
	return from, to, ""
}

// lazyWriter sends the success headers with the first byte, so an export
// that fails before writing can still answer a JSON error.
type lazyWriter struct {
	w       http.ResponseWriter
	name    string
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		h := l.w.Header()
		h.Set("Content-Type", "application/x-ndjson")
		h.Set("Content-Disposition", `attachment; filename="`+l.name+`"`)
		h.Set("X-Content-Type-Options", "nosniff")
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}
