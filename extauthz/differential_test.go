package extauthz_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/text/encoding/unicode"
	"golang.org/x/text/transform"
)

// TestConstraintsDifferential sends many spellings of a db.read call bounded
// by a token (scope project.alpha, max_rows 10) and, for every one the gateway
// allows, reads the request the way two real upstreams would — a Go service
// (encoding/json, case-insensitive field names, UTF-8 only, first query
// value) and a Python one (json.loads on the bytes: UTF-16/32 detected,
// duplicate keys last-wins, exact key names, every query value) — and checks
// that neither reads a table outside the scope or a limit over 10.
func TestConstraintsDifferential(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(1, 2))
	keys := []string{"table", "Table", "TABLE", "tAbLe", "limit", "Limit", "LIMIT", "lImIt"}
	tables := []string{"project.alpha.orders", "tenant.other.payroll", "project.alphabet", "project.alpha"}
	limits := []string{"5", "10", "11", "1e3", "10.5", `"50"`, "-1"}
	allowed, denied := 0, 0
	for i := range 600 {
		// A few members, each a table or a limit, in one of several places.
		var top, args, nested []string
		var query url.Values = url.Values{}
		for range 1 + rng.IntN(3) {
			k := keys[rng.IntN(len(keys))]
			v := limits[rng.IntN(len(limits))]
			if strings.EqualFold(k, "table") {
				v = strconv.Quote(tables[rng.IntN(len(tables))])
			}
			member := strconv.Quote(k) + ":" + v
			switch rng.IntN(4) {
			case 0:
				top = append(top, member)
			case 1:
				args = append(args, member)
			case 2:
				nested = append(nested, member)
			default:
				query.Add(k, strings.Trim(v, `"`))
			}
		}
		if len(nested) > 0 {
			args = append(args, `"filters":{`+strings.Join(nested, ",")+`}`)
		}
		var body string
		switch rng.IntN(3) {
		case 0: // a plan
			body = `{"tool":"db.read","arguments":{` + strings.Join(args, ",") + `}` + prefixComma(top) + `}`
		case 1: // a tool-native body
			body = `{` + strings.Join(append(top, args...), ",") + `}`
		default: // no body: the query only
			for _, m := range append(top, args...) {
				k, v, _ := strings.Cut(m, ":")
				if !strings.HasPrefix(v, "{") {
					uk, _ := strconv.Unquote(k)
					query.Add(uk, strings.Trim(v, `"`))
				}
			}
		}
		raw := []byte(body)
		utf16 := rng.IntN(4) == 0 && body != ""
		if utf16 {
			raw = encodeUTF16(t, body)
		}
		r := e.call(t, "demo-agent", "db.read", fmt.Sprintf("run-diff-%d", i), "")
		r.headers["authorization"] = "Bearer " + e.token(t, "demo-agent", "db.read", withScope("project.alpha"), withMaxRows(10))
		r.body = string(raw)
		r.path = "/query"
		if q := query.Encode(); q != "" {
			r.path += "?" + q
		}
		res := e.check(t, r)
		if !res.allowed {
			denied++
			continue
		}
		allowed++
		for _, read := range []upstreamRead{goUpstream(raw, query), pythonUpstream(t, raw, query)} {
			for _, tb := range read.tables {
				if tb != "project.alpha" && !strings.HasPrefix(tb, "project.alpha.") {
					t.Errorf("%s upstream reads table %q outside the scope from %s ?%s", read.name, tb, body, query.Encode())
				}
			}
			for _, l := range read.limits {
				if l > 10 {
					t.Errorf("%s upstream reads limit %v over max_rows from %s ?%s", read.name, l, body, query.Encode())
				}
			}
		}
	}
	if allowed < 50 || denied < 50 {
		t.Fatalf("allowed %d, denied %d: the generator does not exercise both sides", allowed, denied)
	}
}

func prefixComma(ms []string) string {
	if len(ms) == 0 {
		return ""
	}
	return "," + strings.Join(ms, ",")
}

func encodeUTF16(t *testing.T, s string) []byte {
	b, _, err := transform.Bytes(unicode.UTF16(unicode.LittleEndian, unicode.UseBOM).NewEncoder(), []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type upstreamRead struct {
	name   string
	tables []string
	limits []float64
}

// goUpstream reads the request as a Go service would: encoding/json into a
// struct (field names match case-insensitively; UTF-16 is not JSON to it) and
// the first value of each query parameter.
func goUpstream(body []byte, q url.Values) upstreamRead {
	type fields struct {
		Table   string
		Limit   json.Number
		Filters struct {
			Table string
			Limit json.Number
		}
	}
	var doc struct {
		fields
		Arguments fields
	}
	out := upstreamRead{name: "Go"}
	add := func(f fields) {
		for _, tb := range []string{f.Table, f.Filters.Table} {
			if tb != "" {
				out.tables = append(out.tables, tb)
			}
		}
		for _, l := range []json.Number{f.Limit, f.Filters.Limit} {
			if n, err := l.Float64(); err == nil && l != "" {
				out.limits = append(out.limits, n)
			}
		}
	}
	if json.Unmarshal(body, &doc) == nil {
		add(doc.fields)
		add(doc.Arguments)
	}
	if v := q.Get("table"); v != "" {
		out.tables = append(out.tables, v)
	}
	if n, err := strconv.ParseFloat(q.Get("limit"), 64); err == nil {
		out.limits = append(out.limits, n)
	}
	return out
}

// pythonUpstream reads the request as json.loads(bytes) and a dict lookup
// would: the encoding detected from the bytes, duplicate keys last-wins, exact
// key names, numeric strings coerced as int() would, every query value.
func pythonUpstream(t *testing.T, body []byte, q url.Values) upstreamRead {
	out := upstreamRead{name: "Python"}
	text := body
	if bytes.HasPrefix(body, []byte{0xff, 0xfe}) {
		var err error
		if text, _, err = transform.Bytes(unicode.UTF16(unicode.LittleEndian, unicode.ExpectBOM).NewDecoder(), body); err != nil {
			t.Fatal(err)
		}
	}
	var doc map[string]any
	if json.Unmarshal(text, &doc) == nil { // last duplicate wins, as in Python
		read := func(m map[string]any) {
			if tb, ok := m["table"].(string); ok {
				out.tables = append(out.tables, tb)
			}
			switch l := m["limit"].(type) {
			case float64:
				out.limits = append(out.limits, l)
			case string:
				if n, err := strconv.ParseFloat(l, 64); err == nil {
					out.limits = append(out.limits, n)
				}
			}
		}
		read(doc)
		if a, ok := doc["arguments"].(map[string]any); ok {
			read(a)
			if f, ok := a["filters"].(map[string]any); ok {
				read(f)
			}
		}
	}
	out.tables = append(out.tables, q["table"]...)
	for _, v := range q["limit"] {
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			out.limits = append(out.limits, n)
		}
	}
	return out
}
