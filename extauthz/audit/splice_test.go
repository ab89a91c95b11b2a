package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestSpliceInputMatchesEncoder: a record's line with its input spliced in
// is byte for byte the line the encoder writes with the input inside, for
// inputs json.Marshal produces (escapes, U+2028, keys and strings that look
// like the record's own fields) and every combination of the fields after
// it; inputs that are not compact one-line objects take the encoder's path.
func TestSpliceInputMatchesEncoder(t *testing.T) {
	t.Parallel()
	inputs := []any{
		map[string]any{},
		map[string]any{"a": "<b>&\u2028\u2029", "n": 1.5e300, "nested": map[string]any{"sealed": map[string]any{"policy": 1}, "prev_hash": `,"sealed":`}},
		map[string]any{"s": `,"policy":{"x":1},"prev_hash":"` + strings.Repeat("0", 64) + `"`, "q": "\"\\\"", "arr": []any{nil, true, "é"}},
	}
	sealedValues := []*Sealed{nil, {KeyID: `,"policy":`, Nonce: []byte{1, 2}, Ciphertext: []byte("x")}}
	policies := []*PolicyDecision{nil, {Decision: "deny", Reasons: []string{`,"prev_hash":`}}}
	for _, in := range inputs {
		raw, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if !compactObject(raw) {
			t.Fatalf("json.Marshal output %s not taken as compact", raw)
		}
		for _, sealed := range sealedValues {
			for _, pol := range policies {
				r := Record{DecisionID: "d", Decision: "allow", Detail: map[string]string{"sealed": `,"sealed":`, "input": "x"},
					Input: raw, Sealed: sealed, Policy: pol, PrevHash: zeroHash, Hash: zeroHash}
				var want bytes.Buffer
				if err := encodeLine(&want, &r); err != nil {
					t.Fatal(err)
				}
				var got bytes.Buffer
				without := r
				without.Input = nil
				if err := encodeLine(&got, &without); err != nil {
					t.Fatal(err)
				}
				if err := spliceInput(&got, raw, &without); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got.Bytes(), want.Bytes()) {
					t.Errorf("spliced line differs:\n got %s\nwant %s", got.Bytes(), want.Bytes())
				}
			}
		}
	}
	for _, raw := range []string{"", "{", `{"a": 1}`, "{\"a\":\n1}", `{"a":"\"}`, `[1]`, `{"a":1} `, "{\"a\":\"\t\"}"} {
		if compactObject([]byte(raw)) {
			t.Errorf("%q taken as a compact object", raw)
		}
	}
}
