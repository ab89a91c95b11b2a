package plan

import (
	"encoding/base64"
	"slices"
	"strings"
	"unicode/utf8"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// Header names we read. Envoy lowercases them; we lowercase again anyway.
const (
	hAuthorization = "authorization"
	hToken         = "x-aisecops-token" // the capability token on llm routes
	hRunID         = "x-aisecops-run-id"
	hTraceID       = "x-aisecops-trace-id"
	hProvenance    = "x-aisecops-provenance"
	hDryRun        = "x-aisecops-dry-run"
	hExplain       = "x-aisecops-explain"
	hApproval      = "x-aisecops-approval"
	hPlan          = "x-aisecops-plan"
	hSession       = "mcp-session-id"
	hMethod        = ":method"
	hPath          = ":path"
	hAuthority     = ":authority"
	hHost          = "host"
	hContentType   = "content-type"
	hEncoding      = "content-encoding"
	hPartialBody   = "x-envoy-auth-partial-body"

	inputPrefix = "x-aisecops-"
)

// single is one header as seen across all entries carrying its name.
type single struct {
	n        int    // entries seen
	v        string // value of the last entry
	tooLarge bool   // authorization over the token limit: never copied or validated
}

// headers is what collectHeaders keeps of the request's headers.
type headers struct {
	auth, token, runID, traceID, prov, dryRun, explain, approval, plan, session single
	method, path, authority, host, contentType                                  single

	partial bool     // Envoy cut the body
	encoded bool     // a content coding other than identity
	input   []string // authorization and x-aisecops-* names, sorted, unique
	// others are the headers that reach the upstream as it will see them
	// (repeated ones joined with ","), for egress inspection: not the
	// pseudo-headers, the capability token or the x-aisecops-* inputs.
	others   map[string]string
	encoding string
}

func (h *headers) slot(name string) *single {
	switch name {
	case hAuthorization:
		return &h.auth
	case hToken:
		return &h.token
	case hRunID:
		return &h.runID
	case hTraceID:
		return &h.traceID
	case hProvenance:
		return &h.prov
	case hDryRun:
		return &h.dryRun
	case hExplain:
		return &h.explain
	case hApproval:
		return &h.approval
	case hPlan:
		return &h.plan
	case hSession:
		return &h.session
	case hMethod:
		return &h.method
	case hPath:
		return &h.path
	case hAuthority:
		return &h.authority
	case hHost:
		return &h.host
	case hContentType:
		return &h.contentType
	}
	return nil
}

// collectHeaders reads the request's headers from header_map when Envoy sent one
// (encode_raw_headers), else from the joined headers map.
func collectHeaders(hr *envoy_service_auth_v3.AttributeContext_HttpRequest, o Options) (*headers, error) {
	h := &headers{}
	if entries := hr.GetHeaderMap().GetHeaders(); len(entries) > 0 {
		for _, e := range entries {
			// raw_value is used only when value is empty, as Envoy fills one or the other.
			if err := h.add(e.GetKey(), e.GetValue(), e.GetRawValue(), o); err != nil {
				return nil, err
			}
		}
	} else {
		for k, v := range hr.GetHeaders() {
			if err := h.add(k, v, nil, o); err != nil {
				return nil, err
			}
		}
	}
	slices.Sort(h.input)
	h.input = slices.Compact(h.input)
	return h, nil
}

func (h *headers) add(name, value string, raw []byte, o Options) error {
	if name == "" || !utf8.ValidString(name) {
		return reason.New(reason.BadRequest, "a header name is not valid")
	}
	name = strings.ToLower(name)
	size := len(value)
	if value == "" {
		size = len(raw)
	}
	if name == hAuthorization || strings.HasPrefix(name, inputPrefix) {
		h.input = append(h.input, name)
	}
	slot := h.slot(name)
	if (name == hAuthorization || name == hToken) && size > o.MaxTokenBytes+len("bearer ")+16 {
		// A huge bearer string is refused without copying or scanning it
		// (CVE-2025-30204 class): only its length is looked at.
		slot.n++
		slot.tooLarge = true
		return nil
	}
	if name != hAuthorization && name != hToken && size > o.MaxHeaderBytes {
		return reason.New(reason.BadRequest, "a header value is over the size limit")
	}
	if value == "" && len(raw) > 0 {
		if !utf8.Valid(raw) {
			return reason.New(reason.BadRequest, "a header value is not valid UTF-8")
		}
		value = string(raw)
	} else if !utf8.ValidString(value) {
		return reason.New(reason.BadRequest, "a header value is not valid UTF-8")
	}
	switch name {
	case hPartialBody:
		// Anything but an explicit "false" is partial: an agent's own "false"
		// joined with Envoy's "true" must not read as complete.
		if value != "false" {
			h.partial = true
		}
	case hEncoding:
		for c := range strings.SplitSeq(value, ",") {
			c = strings.TrimSpace(c)
			if c != "" && !strings.EqualFold(c, "identity") {
				h.encoded = true
			}
		}
	}
	if slot != nil {
		slot.n++
		slot.v = value
	}
	if name == hEncoding {
		h.encoding = value
	}
	if !strings.HasPrefix(name, ":") && !strings.HasPrefix(name, inputPrefix) && name != hAuthorization {
		if h.others == nil {
			h.others = make(map[string]string, 8)
		}
		if prev, ok := h.others[name]; ok {
			value = prev + "," + value
		}
		h.others[name] = value
	}
	return nil
}

// one returns the value of a single-valued input header.
func one(s single, name string) (string, bool, error) {
	if s.n == 0 {
		return "", false, nil
	}
	if s.n > 1 || strings.IndexByte(s.v, ',') >= 0 {
		return "", false, reason.New(reason.DuplicateHeader, "header %s sent more than once", name)
	}
	return s.v, true, nil
}

// apply parses the agent's input headers into p.
//
// On llm routes the authorization header carries the model provider's API key,
// which the upstream needs: it is neither read nor removed there, and the
// capability token travels in x-aisecops-token instead (a bare token, or
// "Bearer <token>").
func (h *headers) apply(p *Plan, o Options, llm bool) error {
	src, name := h.auth, hAuthorization
	if llm {
		src, name = h.token, hToken
		if src.n > 0 && !strings.ContainsRune(src.v, ' ') {
			src.v = "Bearer " + src.v
		}
		h.input = slices.DeleteFunc(h.input, func(n string) bool { return n == hAuthorization })
	}
	tok, err := bearer(src, name, o.MaxTokenBytes)
	if err != nil {
		return err
	}
	p.Token = tok
	p.InputHeaders = h.input
	p.Headers = h.others
	p.ContentEncoding = h.encoding

	ids := []struct {
		s     single
		name  string
		chars string
		dst   *string
	}{
		{h.runID, hRunID, idChars, &p.RunID},
		{h.traceID, hTraceID, idChars, &p.TraceID},
		{h.approval, hApproval, idChars, &p.ApprovalID},
		{h.session, hSession, sessionChars, nil},
	}
	for _, id := range ids {
		v, ok, err := one(id.s, id.name)
		if err != nil {
			return err
		}
		if ok && !validID(v, id.chars) {
			return reason.New(reason.BadRequest, "header %s is not a valid id", id.name)
		}
		if id.dst != nil {
			*id.dst = v
		}
	}

	flags := []struct {
		s    single
		name string
		dst  *bool
	}{
		{h.dryRun, hDryRun, &p.DryRun},
		{h.explain, hExplain, &p.Explain},
	}
	for _, f := range flags {
		v, ok, err := one(f.s, f.name)
		if err != nil {
			return err
		}
		switch {
		case !ok:
		case v == "true":
			*f.dst = true
		case v == "false":
		default:
			return reason.New(reason.BadRequest, "header %s must be true or false", f.name)
		}
	}

	v, ok, err := one(h.prov, hProvenance)
	if err != nil {
		return err
	}
	if ok {
		if p.Provenance, err = parseProvenance(v, o); err != nil {
			return err
		}
	}
	// The plan header is parsed with the body (it must agree with it), but its
	// repetition is checked here with the other inputs.
	if _, _, err := one(h.plan, hPlan); err != nil {
		return err
	}
	return nil
}

// bearer returns the token of an "authorization: Bearer <token>" header.
func bearer(s single, name string, maxToken int) (string, error) {
	if s.n == 0 {
		return "", nil
	}
	if s.n > 1 {
		return "", reason.New(reason.DuplicateHeader, "header %s sent more than once", name)
	}
	if s.tooLarge {
		return "", reason.New(reason.TokenTooLarge, "bearer token is over the size limit")
	}
	if strings.IndexByte(s.v, ',') >= 0 {
		return "", reason.New(reason.DuplicateHeader, "header %s sent more than once", name)
	}
	scheme, tok, ok := strings.Cut(s.v, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", reason.New(reason.BadRequest, "%s must be a Bearer token", name)
	}
	tok = strings.Trim(tok, " \t")
	if len(tok) > maxToken {
		return "", reason.New(reason.TokenTooLarge, "bearer token is over the size limit")
	}
	if !token68(tok) {
		return "", reason.New(reason.BadRequest, "bearer token is malformed")
	}
	return tok, nil
}

// token68 reports whether s is an RFC 7235 token68 (a JWT is one).
func token68(s string) bool {
	if s == "" {
		return false
	}
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("-._~+/", c) >= 0 {
			continue
		}
		break
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

// decodeB64URL decodes base64url with or without padding; standard-alphabet
// characters are rejected.
func decodeB64URL(s string) ([]byte, bool) {
	s = strings.TrimRight(s, "=")
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return b, err == nil
}

// parseProvenance decodes x-aisecops-provenance: a base64url JSON list of labels
// with exactly the keys of Provenance.
func parseProvenance(v string, o Options) ([]Provenance, error) {
	bad := reason.New(reason.BadRequest, "header %s is not a valid provenance list", hProvenance)
	raw, ok := decodeB64URL(v)
	if !ok {
		return nil, bad
	}
	doc, err := parseStrict(raw, o.MaxJSONDepth)
	if err != nil {
		if reason.CodeOf(err) == reason.DuplicateKey {
			return nil, err
		}
		return nil, bad
	}
	if doc.kind != kindArray || len(doc.elems) > o.MaxProvenance {
		return nil, bad
	}
	out := make([]Provenance, 0, len(doc.elems))
	for i := range doc.elems {
		e := &doc.elems[i]
		if e.kind != kindObject {
			return nil, bad
		}
		var pv Provenance
		for _, m := range e.members {
			if m.val.kind != kindString || len(m.val.str) > 256 {
				return nil, bad
			}
			switch m.key {
			case "source_type":
				pv.SourceType = m.val.str
			case "source_name":
				pv.SourceName = m.val.str
			case "trust_level":
				pv.TrustLevel = m.val.str
			case "source_hash":
				pv.SourceHash = m.val.str
			default:
				return nil, bad
			}
		}
		if pv.SourceType == "" || pv.SourceName == "" || pv.TrustLevel == "" {
			return nil, bad
		}
		out = append(out, pv)
	}
	return out, nil
}
