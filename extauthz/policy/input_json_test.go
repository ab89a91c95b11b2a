package policy

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

var (
	jsonStrings = []string{"", "a", "db.read", `<script>&"'\`, "\n\r\t\b\f\x00\x1f\x7f", "é漢字", "\u2028\u2029", "\xff\xfe bad", "a\xc3", "\U0001F600", "x\u00a0y"}
	jsonFloats  = []float64{0, math.Copysign(0, -1), 1, -1.5, 0.1, 1e-7, 1e-6, 1e20, 1e21, 123456.789, 1e300, 5e-324, -2.5e-9}
	jsonRaws    = []json.RawMessage{nil, json.RawMessage(`{}`), json.RawMessage(` { "a" : "<b>&" , "n":[1, 2.50, null ,true] } `), json.RawMessage(`"\u2028"`), json.RawMessage("[\"\u2028\"]")}
)

// fill sets every field of v (found by reflection) to a random value of its
// kind: nil and empty collections and pointers included.
func fill(rng *rand.Rand, v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(jsonStrings[rng.IntN(len(jsonStrings))])
	case reflect.Bool:
		v.SetBool(rng.IntN(2) == 0)
	case reflect.Int, reflect.Int64:
		v.SetInt([]int64{0, 1, -7, math.MaxInt64, math.MinInt64, 1767225600000000000}[rng.IntN(6)])
	case reflect.Float64:
		v.SetFloat(jsonFloats[rng.IntN(len(jsonFloats))])
	case reflect.Pointer:
		if rng.IntN(2) == 0 {
			v.SetZero()
			return
		}
		p := reflect.New(v.Type().Elem())
		fill(rng, p.Elem())
		v.Set(p)
	case reflect.Struct:
		for i := range v.NumField() {
			fill(rng, v.Field(i))
		}
	case reflect.Slice:
		if v.Type() == reflect.TypeFor[json.RawMessage]() {
			v.Set(reflect.ValueOf(jsonRaws[rng.IntN(len(jsonRaws))]))
			return
		}
		n := rng.IntN(4) - 1 // -1: nil
		if n < 0 {
			v.SetZero()
			return
		}
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := range n {
			fill(rng, s.Index(i))
		}
		v.Set(s)
	case reflect.Map:
		n := rng.IntN(4) - 1
		if n < 0 {
			v.SetZero()
			return
		}
		m := reflect.MakeMap(v.Type())
		for range n {
			k := reflect.New(v.Type().Key()).Elem()
			fill(rng, k)
			e := reflect.New(v.Type().Elem()).Elem()
			fill(rng, e)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	default:
		panic("fill: unhandled kind " + v.Kind().String() + " in " + v.Type().String())
	}
}

// TestAppendJSONMatchesMarshal: AppendJSON writes exactly json.Marshal's
// bytes for inputs with every field set at random (escapes, float formats,
// omitempty, nil and empty collections, sorted map keys).
func TestAppendJSONMatchesMarshal(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 20000 {
		var in Input
		fill(rng, reflect.ValueOf(&in).Elem())
		want, err := json.Marshal(&in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := in.AppendJSON([]byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[len("prefix"):], want) {
			t.Fatalf("input %d:\n got %s\nwant %s", i, got[len("prefix"):], want)
		}
	}
	for _, in := range []*Input{fullInput(), baseInput(), {}} {
		want, _ := json.Marshal(in)
		if got, err := in.AppendJSON(nil); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("got %s %v\nwant %s", got, err, want)
		}
	}
}

// TestAppendJSONRefusesWhatMarshalRefuses: a non-finite number anywhere, or
// arguments that are not JSON, are an error for both.
func TestAppendJSONRefusesWhatMarshalRefuses(t *testing.T) {
	t.Parallel()
	for _, f := range floatFields(reflect.TypeFor[Input](), nil, "") {
		in := fullInput()
		f.set(reflect.ValueOf(in).Elem(), math.NaN())
		_, errM := json.Marshal(in)
		_, errA := in.AppendJSON(nil)
		if errM == nil || errA == nil {
			t.Errorf("%s NaN: Marshal %v, AppendJSON %v", f.name, errM, errA)
		}
	}
	in := fullInput()
	in.Plan.Arguments = json.RawMessage(`{"a":`)
	if _, err := in.AppendJSON(nil); err == nil {
		t.Error("invalid arguments encoded")
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range jsonStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		in := Input{Request: Request{ID: s}, Plan: Plan{Arguments: json.RawMessage(nil)}}
		want, _ := json.Marshal(&in)
		got, err := in.AppendJSON(nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%q: got %s, want %s", s, got, want)
		}
	})
}

// BenchmarkEncodeInput: the audit record's input, by encoding/json and by
// EncodeJSON.
func BenchmarkEncodeInput(b *testing.B) {
	in := fullInput()
	in.Plan.Arguments = nil
	in.Derive()
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("EncodeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := in.EncodeJSON(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
