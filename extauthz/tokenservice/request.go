package tokenservice

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// MaxRequestBytes bounds a POST /v1/tokens body.
const MaxRequestBytes = 64 << 10

// Character sets and bounds of the request's identifiers: the same as the
// Check path's (extauthz/plan), so a token names only what a Check can match.
const (
	idChars    = "._:@-"
	toolChars  = "._:/-"
	maxIDLen   = 128
	maxToolLen = 256
	maxScope   = 256
)

// Request is a POST /v1/tokens body after validation.
type Request struct {
	Tool        string
	Scope       string
	Constraints capability.Constraints
	RunID       string
	TTL         time.Duration // the requested lifetime, or the default
	SingleUse   bool
}

// wireRequest is the body as sent.
type wireRequest struct {
	Tool        string           `json:"tool"`
	Scope       string           `json:"scope"`
	Constraints *wireConstraints `json:"constraints"`
	RunID       string           `json:"run_id"`
	TTL         string           `json:"ttl"`
	SingleUse   bool             `json:"single_use"`
}

type wireConstraints struct {
	MaxRows *int64   `json:"max_rows"`
	MaxCost *float64 `json:"max_cost"`
	Expiry  string   `json:"expiry"`
}

var (
	requestKeys    = []string{"tool", "scope", "constraints", "run_id", "ttl", "single_use"}
	constraintKeys = []string{"max_rows", "max_cost", "expiry"}
)

func badRequest(format string, args ...any) error {
	return reason.New(reason.BadRequest, format, args...)
}

// parseRequest reads and validates r's body.
func parseRequest(r *http.Request, now time.Time, defaultTTL time.Duration) (Request, error) {
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if err != nil {
		return Request{}, badRequest("could not read the request body")
	}
	if len(data) > MaxRequestBytes {
		return Request{}, badRequest("request body larger than %d bytes", MaxRequestBytes)
	}
	return ParseRequest(data, now, defaultTTL)
}

// ParseRequest decodes a token request strictly — one JSON object, no
// duplicate or case-variant keys, no unknown field, right types — and
// validates it at now. defaultTTL (capability.DefaultTTL when 0) applies when
// the request names no ttl. Errors are *reason.Error (bad_request or
// duplicate_key) whose messages name fields, never values.
func ParseRequest(data []byte, now time.Time, defaultTTL time.Duration) (Request, error) {
	if _, err := plan.CanonicalJSON(data); err != nil {
		if reason.CodeOf(err) == reason.DuplicateKey {
			return Request{}, reason.New(reason.DuplicateKey, "the request repeats a key")
		}
		return Request{}, badRequest("the body must be one JSON object")
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil || keys == nil {
		return Request{}, badRequest("the body must be a JSON object")
	}
	if err := exactKeys(keys, requestKeys, ""); err != nil {
		return Request{}, err
	}
	if c, ok := keys["constraints"]; ok && !bytes.Equal(bytes.TrimSpace(c), []byte("null")) {
		var ck map[string]json.RawMessage
		if err := json.Unmarshal(c, &ck); err != nil || ck == nil {
			return Request{}, badRequest("constraints must be an object")
		}
		if err := exactKeys(ck, constraintKeys, "constraints."); err != nil {
			return Request{}, err
		}
	}
	var w wireRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return Request{}, badRequest("%s has the wrong type", te.Field)
		}
		return Request{}, badRequest("the body is not a valid token request")
	}
	return w.validate(now, defaultTTL)
}

func exactKeys(m map[string]json.RawMessage, allowed []string, prefix string) error {
	for k := range m {
		ok := false
		for _, a := range allowed {
			if k == a {
				ok = true
				break
			}
		}
		if !ok {
			if len(k) > 64 || !validID(k, "_") {
				return badRequest("unknown field in %srequest", prefix)
			}
			return badRequest("unknown field %s%s", prefix, k)
		}
	}
	return nil
}

func (w *wireRequest) validate(now time.Time, defaultTTL time.Duration) (Request, error) {
	var errs []string
	req := Request{Tool: w.Tool, Scope: w.Scope, RunID: w.RunID, SingleUse: w.SingleUse}
	switch {
	case w.Tool == "":
		errs = append(errs, "tool is required")
	case len(w.Tool) > maxToolLen || !validID(w.Tool, toolChars):
		errs = append(errs, "tool is not a valid tool name")
	}
	if len(w.Scope) > maxScope || !printable(w.Scope) {
		errs = append(errs, "scope must be at most 256 printable ASCII characters")
	}
	if w.RunID != "" && (len(w.RunID) > maxIDLen || !validID(w.RunID, idChars)) {
		errs = append(errs, "run_id must be 1-128 letters, digits or ._:@-")
	}
	if defaultTTL <= 0 {
		defaultTTL = capability.DefaultTTL
	}
	req.TTL = defaultTTL
	if w.TTL != "" {
		d, err := time.ParseDuration(w.TTL)
		switch {
		case err != nil:
			errs = append(errs, `ttl must be a duration such as "5m"`)
		case d < time.Second:
			errs = append(errs, "ttl must be at least 1s")
		default:
			req.TTL = d
		}
	}
	if c := w.Constraints; c != nil {
		if c.MaxRows != nil && *c.MaxRows < 0 {
			errs = append(errs, "constraints.max_rows must not be negative")
		}
		if c.MaxCost != nil && (*c.MaxCost < 0 || math.IsInf(*c.MaxCost, 0) || math.IsNaN(*c.MaxCost)) {
			errs = append(errs, "constraints.max_cost must be a non-negative number")
		}
		if c.Expiry != "" {
			t, err := time.Parse(time.RFC3339, c.Expiry)
			switch {
			case err != nil:
				errs = append(errs, "constraints.expiry must be an RFC 3339 time")
			case !t.After(now):
				errs = append(errs, "constraints.expiry has passed")
			}
		}
		req.Constraints = capability.Constraints{MaxRows: c.MaxRows, MaxCost: c.MaxCost, Expiry: c.Expiry}
	}
	if len(errs) > 0 {
		return Request{}, badRequest("%s", strings.Join(errs, "; "))
	}
	return req, nil
}

// validID reports whether s is 1..maxToolLen ASCII letters, digits or bytes of
// extra (the callers apply their own, tighter, length bound).
func validID(s, extra string) bool {
	if s == "" || len(s) > maxToolLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte(extra, c) >= 0 {
			continue
		}
		return false
	}
	return true
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
