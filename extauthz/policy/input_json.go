package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
)

// AppendJSON appends in encoded exactly as json.Marshal encodes it (field
// order, omitempty, HTML-safe string escapes, float format, sorted map keys,
// null for nil slices and maps), without reflection: the audit record carries
// every Check's input, and encoding/json's reflection was most of that
// cost. A non-finite number is an error, as it is for json.Marshal.
// TestAppendJSONMatchesMarshal holds the two byte for byte over every field
// (found by reflection, so a new field without its line here fails it).
func (in *Input) AppendJSON(b []byte) ([]byte, error) {
	e := jsonEnc{b: b}
	e.raw(`{"time":{"now_ns":`)
	e.int(in.Time.NowNS)
	e.key("rfc3339", false)
	e.str(in.Time.RFC3339)
	e.raw(`},"request":{"id":`)
	r := &in.Request
	e.str(r.ID)
	e.key("method", false)
	e.str(r.Method)
	e.key("host", false)
	e.str(r.Host)
	e.key("path", false)
	e.str(r.Path)
	e.key("dry_run", false)
	e.bool(r.DryRun)
	e.key("explain", false)
	e.bool(r.Explain)
	e.raw(`},"route":`)
	e.route(&in.Route)
	e.raw(`,"agent":{"id":`)
	a := &in.Agent
	e.str(a.ID)
	e.key("known", false)
	e.bool(a.Known)
	e.key("authenticated", false)
	e.bool(a.Authenticated)
	e.key("tool_allowed", false)
	e.bool(a.ToolAllowed)
	e.key("allowed_tools", false)
	e.strs(a.AllowedTools)
	e.key("approval_threshold", false)
	e.float(a.Approval)
	e.key("halt_threshold", false)
	e.float(a.Halt)
	e.raw(`},"plan":{"source":`)
	p := &in.Plan
	e.str(p.Source)
	if p.MCPMethod != "" {
		e.key("mcp_method", false)
		e.str(p.MCPMethod)
	}
	e.key("tool", false)
	e.str(p.Tool)
	e.key("arguments", false)
	e.rawJSON(p.Arguments)
	e.key("arguments_hash", false)
	e.str(p.ArgumentsHash)
	e.key("binding", false)
	e.str(p.Binding)
	e.key("protocol", false)
	e.bool(p.Protocol)
	e.key("trace_id", false)
	e.str(p.TraceID)
	e.key("run_id", false)
	e.str(p.RunID)
	e.raw(`},"token":{"present":`)
	t := &in.Token
	e.bool(t.Present)
	if t.JTI != "" {
		e.key("jti", false)
		e.str(t.JTI)
	}
	if t.Scope != "" {
		e.key("scope", false)
		e.str(t.Scope)
	}
	if t.PolicyVersion != "" {
		e.key("policy_version", false)
		e.str(t.PolicyVersion)
	}
	if t.RunID != "" {
		e.key("run_id", false)
		e.str(t.RunID)
	}
	if t.SingleUse {
		e.key("single_use", false)
		e.bool(true)
	}
	if t.MaxRows != nil {
		e.key("max_rows", false)
		e.int(*t.MaxRows)
	}
	if t.MaxCost != nil {
		e.key("max_cost", false)
		e.float(*t.MaxCost)
	}
	if t.ExpiresNS != 0 {
		e.key("exp_ns", false)
		e.int(t.ExpiresNS)
	}
	e.raw(`},"provenance":`)
	if in.Provenance == nil {
		e.raw("null")
	} else {
		e.raw("[")
		for i := range in.Provenance {
			if i > 0 {
				e.raw(",")
			}
			e.provenance(&in.Provenance[i])
		}
		e.raw("]")
	}
	e.key("untrusted_context", false)
	e.bool(in.UntrustedContext)
	e.raw(`,"risk":{"r_step":`)
	k := &in.Risk
	e.float(k.RStep)
	e.key("e", false)
	e.float(k.E)
	e.key("t", false)
	e.float(k.T)
	e.key("b", false)
	e.float(k.B)
	e.key("step", false)
	e.float(k.Step)
	e.key("linked", false)
	e.float(k.Linked)
	e.key("total_before", false)
	e.float(k.TotalBefore)
	e.key("total", false)
	e.float(k.Total)
	if len(k.Escalations) > 0 {
		e.key("escalations", false)
		e.strs(k.Escalations)
	}
	e.raw(`},"budget":{"consumption":`)
	if in.Budget.Consumption == nil {
		e.raw("null")
	} else {
		e.raw("{")
		for i, key := range sortedKeys(in.Budget.Consumption) {
			e.key(key, i == 0)
			e.float(in.Budget.Consumption[key])
		}
		e.raw("}")
	}
	e.key("exceeded", false)
	e.str(in.Budget.Exceeded)
	e.raw(`},"run":{"id":`)
	u := &in.Run
	e.str(u.ID)
	e.key("tool_calls", false)
	e.int(u.ToolCalls)
	e.key("write_operations", false)
	e.int(u.WriteOps)
	e.key("cost", false)
	e.float(u.Cost)
	e.key("facts", false)
	e.strs(u.Facts)
	e.key("elapsed_ns", false)
	e.int(u.ElapsedNS)
	e.key("agent_tool_calls", false)
	e.int(u.AgentToolCalls)
	e.key("agent_cost", false)
	e.float(u.AgentCost)
	e.key("tainted", false)
	e.bool(u.Tainted)
	e.key("read_internal", false)
	e.bool(u.ReadInternal)
	e.raw(`},"approval":{`)
	ap := &in.Approval
	if ap.ID != "" {
		e.key("id", true)
		e.str(ap.ID)
		e.raw(",")
	}
	e.raw(`"present":`)
	e.bool(ap.Present)
	e.key("valid", false)
	e.bool(ap.Valid)
	if ap.Status != "" {
		e.key("status", false)
		e.str(ap.Status)
	}
	e.raw(`},"findings":`)
	if in.Findings == nil {
		e.raw("null")
	} else {
		e.raw("[")
		for i := range in.Findings {
			if i > 0 {
				e.raw(",")
			}
			f := &in.Findings[i]
			e.raw(`{"detector":`)
			e.str(f.Detector)
			e.key("location", false)
			e.str(f.Location)
			e.key("class", false)
			e.str(f.Class)
			e.key("count", false)
			e.int(int64(f.Count))
			if f.Hash != "" {
				e.key("hash", false)
				e.str(f.Hash)
			}
			e.raw("}")
		}
		e.raw("]")
	}
	e.key("finding_classes", false)
	if in.FindingClasses == nil {
		e.raw("null")
	} else {
		e.raw("{")
		for i, key := range sortedKeys(in.FindingClasses) {
			e.key(key, i == 0)
			e.bool(in.FindingClasses[key])
		}
		e.raw("}")
	}
	e.raw("}")
	return e.b, e.err
}

// EncodeJSON is AppendJSON into a buffer of its own, of exactly the size
// needed (the encoding goes through a pooled scratch buffer).
func (in *Input) EncodeJSON() ([]byte, error) {
	scratch := jsonScratch.Get().(*[]byte)
	b, err := in.AppendJSON((*scratch)[:0])
	out := bytes.Clone(b)
	if cap(b) <= 64<<10 {
		*scratch = b
		jsonScratch.Put(scratch)
	}
	return out, err
}

var jsonScratch = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (e *jsonEnc) route(r *plan.Route) {
	e.raw(`{"tool":`)
	e.str(r.Tool)
	e.key("tool_class", false)
	e.str(r.ToolClass)
	e.key("base_risk", false)
	e.float(r.BaseRisk)
	e.key("trust", false)
	e.str(r.Trust)
	e.key("cost", false)
	e.float(r.Cost)
	e.key("route_version", false)
	e.str(r.RouteVersion)
	if len(r.MCPTools) > 0 {
		e.key("mcp_tools", false)
		e.strs(r.MCPTools)
	}
	e.raw("}")
}

func (e *jsonEnc) provenance(p *plan.Provenance) {
	e.raw(`{"source_type":`)
	e.str(p.SourceType)
	e.key("source_name", false)
	e.str(p.SourceName)
	e.key("trust_level", false)
	e.str(p.TrustLevel)
	if p.SourceHash != "" {
		e.key("source_hash", false)
		e.str(p.SourceHash)
	}
	e.raw("}")
}

// jsonEnc appends JSON as encoding/json's Marshal writes it.
type jsonEnc struct {
	b   []byte
	err error
}

func (e *jsonEnc) raw(s string) { e.b = append(e.b, s...) }

// key writes `,"k":` (or `"k":` when first).
func (e *jsonEnc) key(k string, first bool) {
	if !first {
		e.b = append(e.b, ',')
	}
	e.str(k)
	e.b = append(e.b, ':')
}

func (e *jsonEnc) bool(v bool) { e.b = strconv.AppendBool(e.b, v) }

func (e *jsonEnc) int(v int64) { e.b = strconv.AppendInt(e.b, v, 10) }

func (e *jsonEnc) float(f float64) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		if e.err == nil {
			e.err = errors.New("json: unsupported value: " + strconv.FormatFloat(f, 'g', -1, 64))
		}
		e.b = append(e.b, '0')
		return
	}
	e.b = appendFloat(e.b, f)
}

func (e *jsonEnc) strs(ss []string) {
	if ss == nil {
		e.raw("null")
		return
	}
	e.b = append(e.b, '[')
	for i, s := range ss {
		if i > 0 {
			e.b = append(e.b, ',')
		}
		e.str(s)
	}
	e.b = append(e.b, ']')
}

// rawJSON writes a RawMessage as Marshal does: null when nil, else compacted
// with HTML-safe escapes (and an error when it is not valid JSON).
func (e *jsonEnc) rawJSON(m json.RawMessage) {
	if m == nil {
		e.raw("null")
		return
	}
	var c bytes.Buffer
	if err := json.Compact(&c, m); err != nil {
		if e.err == nil {
			e.err = err
		}
		return
	}
	var h bytes.Buffer
	json.HTMLEscape(&h, c.Bytes())
	e.b = append(e.b, h.Bytes()...)
}

const hexDigits = "0123456789abcdef"

// str writes s quoted as encoding/json does with HTML escaping on: \" \\
// \b \f \n \r \t, other control bytes and < > & as \u00XX, invalid UTF-8
// as \ufffd, and U+2028 and U+2029 escaped.
func (e *jsonEnc) str(s string) {
	b := append(e.b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	e.b = append(append(b, s[start:]...), '"')
}
