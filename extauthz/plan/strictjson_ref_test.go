package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

type strictParser struct {
	dec      *json.Decoder
	maxDepth int
}

// parseStrictRef is the reference strict parser: a json.Decoder.Token walk
// with UseNumber. It is too slow for the Check path (an error value is
// allocated per scalar token) but it is encoding/json's own tokenizer, so the
// fast walker is fuzzed against it.
func parseStrictRef(data []byte, maxDepth int) (value, error) {
	if !utf8.Valid(data) {
		return value{}, reason.New(reason.BadPlan, "JSON is not valid UTF-8")
	}
	// encoding/json turns a lone surrogate escape into U+FFFD; an upstream may
	// not, so the two would read different strings.
	if loneSurrogate(data) {
		return value{}, reason.New(reason.BadPlan, "JSON has an unpaired surrogate escape")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	p := strictParser{dec: dec, maxDepth: maxDepth}
	tok, err := dec.Token()
	if err != nil {
		return value{}, badJSON("JSON is not valid", err)
	}
	v, err := p.value(tok, 0)
	if err != nil {
		return value{}, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return value{}, badJSON("JSON has trailing data", err)
	}
	return v, nil
}

func (p *strictParser) value(tok json.Token, depth int) (value, error) {
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return p.object(depth + 1)
		case '[':
			return p.array(depth + 1)
		}
		return value{}, badJSON("JSON is not valid", nil)
	case string:
		return value{kind: kindString, str: t}, nil
	case json.Number:
		return value{kind: kindNumber, str: string(t)}, nil
	case bool:
		if t {
			return value{kind: kindBool, str: "true"}, nil
		}
		return value{kind: kindBool, str: "false"}, nil
	case nil:
		return value{kind: kindNull}, nil
	}
	return value{}, badJSON("JSON is not valid", nil)
}

func (p *strictParser) object(depth int) (value, error) {
	if depth > p.maxDepth {
		return value{}, reason.New(reason.BadPlan, "JSON is nested too deeply")
	}
	v := value{kind: kindObject}
	var keys keySet
	for {
		tok, err := p.dec.Token()
		if err != nil {
			return value{}, badJSON("JSON is not valid", err)
		}
		if d, ok := tok.(json.Delim); ok && d == '}' {
			return v, nil
		}
		key, ok := tok.(string)
		if !ok {
			return value{}, badJSON("JSON is not valid", nil)
		}
		if keys.dup(v.members, key) {
			return value{}, errDuplicateKey()
		}
		if tok, err = p.dec.Token(); err != nil {
			return value{}, badJSON("JSON is not valid", err)
		}
		mv, err := p.value(tok, depth)
		if err != nil {
			return value{}, err
		}
		v.members = append(v.members, member{key: key, val: mv})
	}
}

func (p *strictParser) array(depth int) (value, error) {
	if depth > p.maxDepth {
		return value{}, reason.New(reason.BadPlan, "JSON is nested too deeply")
	}
	v := value{kind: kindArray}
	for {
		tok, err := p.dec.Token()
		if err != nil {
			return value{}, badJSON("JSON is not valid", err)
		}
		if d, ok := tok.(json.Delim); ok && d == ']' {
			return v, nil
		}
		ev, err := p.value(tok, depth)
		if err != nil {
			return value{}, err
		}
		v.elems = append(v.elems, ev)
	}
}

// foldKey maps s to a form equal for exactly the strings strings.EqualFold
// calls equal: every rune becomes the smallest rune of its simple-folding orbit

// FuzzStrictJSON checks the fast walker against the Decoder.Token reference:
// the same verdict and code, the same canonical form.
func FuzzStrictJSON(f *testing.F) {
	for _, s := range []string{
		`{"b":1,"a":[3,{"d":null,"c":true}]}`, ` { "a" : 1.50 , "b":-0e3 } `, `{"s":"<&>\u00e9\n\u0001\"\\/"}`,
		`{"😀":"\ud83d\ude00"}`, `{"a":1,"a":2}`, `{"a":1,"A":2}`, `{"a":1}x`, ``, `{"a":"\udc00"}`,
		"{\"a\":\"\xff\"}", `{"a":01}`, `[1,]`, `[[[[[[[[[1]]]]]]]]]`, `"x\\u0041"`, `1e5`, `-0.0E+1`,
		`[true,false,null]`, `{"\u006bey":1,"key":2}`, `{"k":1,"\u212a":2}`, planBody, mcpCall,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, errFast := parseStrict(data, 8)
		ref, errRef := parseStrictRef(data, 8)
		if (errFast == nil) != (errRef == nil) {
			t.Fatalf("verdicts differ on %q: fast %v, reference %v", data, errFast, errRef)
		}
		// On malformed JSON the streaming reference may meet a duplicate key
		// before the syntax error; both reject, only the code may differ.
		if json.Valid(data) && reason.CodeOf(errFast) != reason.CodeOf(errRef) {
			t.Fatalf("codes differ on %q: fast %v, reference %v", data, errFast, errRef)
		}
		if errFast != nil {
			return
		}
		a, b := appendCanonical(nil, &fast), appendCanonical(nil, &ref)
		if !bytes.Equal(a, b) {
			t.Fatalf("canonical forms differ on %q:\n fast %s\n ref  %s", data, a, b)
		}
		if !json.Valid(a) {
			t.Fatalf("canonical form %s is not JSON", a)
		}
	})
}
