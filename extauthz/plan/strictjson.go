package plan

import (
	"bytes"
	"encoding/json"

	"slices"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// kind is a JSON value's type.
type kind uint8

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindObject
	kindArray
)

// value is a parsed JSON value. Numbers keep their literal text, so canonical
// output never rounds what the agent sent.
type value struct {
	kind    kind
	str     string   // string contents, number literal, or "true"/"false"
	members []member // object members in input order
	elems   []value  // array elements
}

type member struct {
	key string
	val value
}

// get returns the member named exactly key.
func (v *value) get(key string) (*value, bool) {
	for i := range v.members {
		if v.members[i].key == key {
			return &v.members[i].val, true
		}
	}
	return nil, false
}

// caseVariant reports whether v has a key that differs only in case from one of
// keys: such a key is not the key we look for, yet a case-insensitive upstream
// (Go's encoding/json among them) would read it as that key.
func (v *value) caseVariant(keys ...string) bool {
	for _, m := range v.members {
		for _, k := range keys {
			if m.key != k && strings.EqualFold(m.key, k) {
				return true
			}
		}
	}
	return false
}

// linearKeys is the object size up to which keySet compares keys pairwise.
const linearKeys = 16

func badJSON(msg string, err error) *reason.Error {
	return reason.Wrap(reason.BadPlan, err, "%s", msg)
}

func errDuplicateKey() *reason.Error {
	return reason.New(reason.DuplicateKey, "JSON object has a duplicate or case-variant key")
}

// parseStrict parses data as one strict JSON value: valid UTF-8, no lone
// surrogate escapes, no duplicate or case-variant keys at any depth, nesting at
// most maxDepth, nothing after the value. Errors are bad_plan or duplicate_key.
//
// Syntax is decided by encoding/json (json.Valid), so we accept exactly what Go
// accepts. The tree is then built by a small walker over the validated bytes
// rather than by json.Decoder.Token, which allocates an error value for every
// scalar token and made a 1 KB body cost ~60 µs. strictjson_ref_test.go keeps
// the Decoder.Token walk as the reference and fuzzes the two against each other.
func parseStrict(data []byte, maxDepth int) (value, error) {
	if !utf8.Valid(data) {
		return value{}, reason.New(reason.BadPlan, "JSON is not valid UTF-8")
	}
	// encoding/json turns a lone surrogate escape into U+FFFD; an upstream may
	// not, so the two would read different strings.
	if loneSurrogate(data) {
		return value{}, reason.New(reason.BadPlan, "JSON has an unpaired surrogate escape")
	}
	if !json.Valid(data) {
		return value{}, reason.New(reason.BadPlan, "JSON is not valid")
	}
	w := walker{s: string(data), maxDepth: maxDepth}
	return w.value(0)
}

// walker builds the tree of JSON that json.Valid accepted, so it has no syntax
// errors to report, only depth and duplicate keys. Strings without escapes are
// substrings of s and cost no allocation.
type walker struct {
	s        string
	i        int
	maxDepth int
}

func (w *walker) ws() {
	for w.i < len(w.s) {
		switch w.s[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

func (w *walker) value(depth int) (value, error) {
	w.ws()
	switch w.s[w.i] {
	case '{':
		return w.object(depth + 1)
	case '[':
		return w.array(depth + 1)
	case '"':
		return value{kind: kindString, str: w.str()}, nil
	case 't':
		w.i += len("true")
		return value{kind: kindBool, str: "true"}, nil
	case 'f':
		w.i += len("false")
		return value{kind: kindBool, str: "false"}, nil
	case 'n':
		w.i += len("null")
		return value{kind: kindNull}, nil
	}
	start := w.i
	for w.i < len(w.s) && strings.IndexByte("+-0123456789.eE", w.s[w.i]) >= 0 {
		w.i++
	}
	return value{kind: kindNumber, str: w.s[start:w.i]}, nil
}

func (w *walker) object(depth int) (value, error) {
	if depth > w.maxDepth {
		return value{}, reason.New(reason.BadPlan, "JSON is nested too deeply")
	}
	w.i++ // {
	v := value{kind: kindObject}
	var keys keySet
	w.ws()
	if w.s[w.i] == '}' {
		w.i++
		return v, nil
	}
	for {
		w.ws()
		key := w.str()
		if keys.dup(v.members, key) {
			return value{}, errDuplicateKey()
		}
		w.ws()
		w.i++ // :
		mv, err := w.value(depth)
		if err != nil {
			return value{}, err
		}
		if v.members == nil {
			v.members = make([]member, 0, 4) // most objects are small
		}
		v.members = append(v.members, member{key: key, val: mv})
		w.ws()
		c := w.s[w.i]
		w.i++ // , or }
		if c == '}' {
			return v, nil
		}
	}
}

func (w *walker) array(depth int) (value, error) {
	if depth > w.maxDepth {
		return value{}, reason.New(reason.BadPlan, "JSON is nested too deeply")
	}
	w.i++ // [
	v := value{kind: kindArray}
	w.ws()
	if w.s[w.i] == ']' {
		w.i++
		return v, nil
	}
	for {
		ev, err := w.value(depth)
		if err != nil {
			return value{}, err
		}
		v.elems = append(v.elems, ev)
		w.ws()
		c := w.s[w.i]
		w.i++ // , or ]
		if c == ']' {
			return v, nil
		}
	}
}

// str reads the string whose opening quote is at w.i and decodes it as
// encoding/json does.
func (w *walker) str() string {
	start := w.i + 1
	j := start
	for ; w.s[j] != '"'; j++ {
		if w.s[j] == '\\' {
			return w.unescape(start)
		}
	}
	w.i = j + 1
	return w.s[start:j]
}

func (w *walker) unescape(start int) string {
	var b strings.Builder
	j := start
	for {
		c := w.s[j]
		if c == '"' {
			break
		}
		if c != '\\' {
			b.WriteByte(c)
			j++
			continue
		}
		e := w.s[j+1]
		j += 2
		switch e {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r := hex4s(w.s[j : j+4])
			j += 4
			if utf16.IsSurrogate(r) {
				// As encoding/json: a surrogate pair decodes to one rune,
				// anything else to U+FFFD (loneSurrogate rejected those already).
				r2 := unicode.ReplacementChar
				if j+6 <= len(w.s) && w.s[j] == '\\' && w.s[j+1] == 'u' {
					r2 = hex4s(w.s[j+2 : j+6])
				}
				if d := utf16.DecodeRune(r, r2); d != unicode.ReplacementChar {
					r = d
					j += 6
				} else {
					r = unicode.ReplacementChar
				}
			}
			b.WriteRune(r)
		default: // " \ /
			b.WriteByte(e)
		}
	}
	w.i = j + 1
	return b.String()
}

// hex4s decodes four hex digits json.Valid has already checked.
func hex4s(s string) rune {
	var r rune
	for i := 0; i < 4; i++ {
		r = r<<4 | rune(unhex(s[i]))
	}
	return r
}

// keySet finds duplicate and case-variant keys of one object: pairwise for
// small objects, then through a map of folded keys, so an object with many
// keys costs linear, not quadratic, time.
type keySet struct {
	folded map[string]struct{}
}

func (ks *keySet) dup(members []member, key string) bool {
	if len(members) < linearKeys {
		for i := range members {
			if strings.EqualFold(members[i].key, key) {
				return true
			}
		}
		return false
	}
	if ks.folded == nil {
		ks.folded = make(map[string]struct{}, 2*linearKeys)
		for i := range members {
			ks.folded[foldKey(members[i].key)] = struct{}{}
		}
	}
	fk := foldKey(key)
	if _, ok := ks.folded[fk]; ok {
		return true
	}
	ks.folded[fk] = struct{}{}
	return false
}

// (for ASCII letters, the upper case).
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s)
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < m {
				m = f
			}
		}
		b.WriteRune(m)
	}
	return b.String()
}

// loneSurrogate reports whether data has a \u escape of a UTF-16 surrogate that
// is not part of a high+low pair. Backslashes only occur inside JSON strings, so
// a byte scan suffices; malformed escapes are left for the decoder to reject.
func loneSurrogate(data []byte) bool {
	for i := bytes.IndexByte(data, '\\'); i >= 0 && i < len(data); i++ {
		if data[i] != '\\' {
			continue
		}
		i++
		if i >= len(data) || data[i] != 'u' {
			continue // an escaped character, "\\" included, is skipped whole
		}
		r, ok := hex4(data, i+1)
		if !ok {
			continue
		}
		i += 4
		switch {
		case 0xDC00 <= r && r <= 0xDFFF:
			return true
		case 0xD800 <= r && r <= 0xDBFF:
			if i+2 >= len(data) || data[i+1] != '\\' || data[i+2] != 'u' {
				return true
			}
			lo, ok := hex4(data, i+3)
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		d := unhex(c)
		if d < 0 {
			return 0, false
		}
		r = r<<4 | rune(d)
	}
	return r, true
}

// appendCanonical appends v as canonical JSON: no insignificant whitespace,
// object keys sorted by code point (recursively), strings escaped only where
// JSON requires it (RFC 8785 style), numbers as written. It sorts v's members
// in place.
func appendCanonical(dst []byte, v *value) []byte {
	switch v.kind {
	case kindNull:
		return append(dst, "null"...)
	case kindBool, kindNumber:
		return append(dst, v.str...)
	case kindString:
		return appendString(dst, v.str)
	case kindArray:
		dst = append(dst, '[')
		for i := range v.elems {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendCanonical(dst, &v.elems[i])
		}
		return append(dst, ']')
	case kindObject:
		slices.SortFunc(v.members, func(a, b member) int { return strings.Compare(a.key, b.key) })
		dst = append(dst, '{')
		for i := range v.members {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, v.members[i].key)
			dst = append(dst, ':')
			dst = appendCanonical(dst, &v.members[i].val)
		}
		return append(dst, '}')
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	const hexd = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexd[c>>4], hexd[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// canonical returns v's canonical JSON.
func canonical(v *value) json.RawMessage {
	return appendCanonical(make([]byte, 0, 64), v)
}
