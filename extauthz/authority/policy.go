package authority

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Bundle is a policy bundle as the audit reads it: its files, and the version
// and content hash its loader reports.
type Bundle struct {
	Version string `json:"version"`
	Hash    string `json:"hash"`
	Files   fs.FS  `json:"-"`
}

// Reason rules: a rule of these sets, one per reason code, denies or asks
// for a human. Removing one is a loosening; adding one a tightening.
const (
	denyReasons     = "deny_reasons"
	approvalReasons = "approval_reasons"
)

// DiffPolicy lists what changed from the old bundle to the new one that may
// widen authority: reason rules removed or edited, any other rule edited,
// added or removed (a helper rule decides what the reason rules see, and an
// added definition of one is an "or"), and loosened data.aisecops entries.
// A changed content hash is reported whatever else changed.
func DiffPolicy(old, new Bundle) ([]Change, error) {
	var out []Change
	if old.Hash == new.Hash {
		return nil, nil
	}
	out = append(out, Change{Change: PolicyChanged, Field: "hash", Old: old.Version + " " + old.Hash, New: new.Version + " " + new.Hash})
	or, err := rules(old.Files)
	if err != nil {
		return nil, fmt.Errorf("authority: old bundle: %w", err)
	}
	nr, err := rules(new.Files)
	if err != nil {
		return nil, fmt.Errorf("authority: new bundle: %w", err)
	}
	for _, key := range union(keys(or), keys(nr)) {
		o, inOld := or[key]
		n, inNew := nr[key]
		reasonRule := strings.Contains(key, "/")
		switch {
		case o == n:
		case reasonRule && !inNew:
			out = append(out, Change{Change: PolicyRuleRemoved, Field: key, Old: "present", New: "removed", Growth: true})
		case reasonRule && !inOld:
			out = append(out, Change{Change: Narrowed, Field: key, New: "added"})
		case !inOld:
			out = append(out, Change{Change: PolicyRuleChanged, Field: key, Old: "absent", New: "added", Growth: true})
		case !inNew:
			out = append(out, Change{Change: PolicyRuleChanged, Field: key, Old: "present", New: "removed", Growth: true})
		default:
			out = append(out, Change{Change: PolicyRuleChanged, Field: key, Old: "as before", New: "edited", Growth: true})
		}
	}
	dc, err := diffData(old.Files, new.Files)
	if err != nil {
		return nil, err
	}
	return append(out, dc...), nil
}

// rules maps each rule of a bundle's Rego files (tests excluded) to its
// canonical text: "<package>.<rule>" for a rule, and "<package>.<set>/<code>"
// for a reason rule, whose message may change without changing what it does.
func rules(fsys fs.FS) (map[string]string, error) {
	texts := map[string][]string{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".rego") || strings.HasSuffix(p, "_test.rego") {
			return err
		}
		src, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		m, err := ast.ParseModuleWithOpts(p, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return err
		}
		pkg := strings.TrimPrefix(m.Package.Path.String(), "data.")
		for _, r := range m.Rules {
			name := r.Head.Ref().String()
			key, text := pkg+"."+name, r.String()
			if code, ok := reasonCode(r); ok && (name == denyReasons || name == approvalReasons) {
				key, text = pkg+"."+name+"/"+code, r.Body.String()
			}
			texts[key] = append(texts[key], text)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(texts))
	for k, ts := range texts {
		sort.Strings(ts)
		out[k] = strings.Join(ts, "\n")
	}
	return out, nil
}

// reasonCode is the "code" of a reason rule's element.
func reasonCode(r *ast.Rule) (string, bool) {
	if r.Head.Key == nil {
		return "", false
	}
	obj, ok := r.Head.Key.Value.(ast.Object)
	if !ok {
		return "", false
	}
	t := obj.Get(ast.StringTerm("code"))
	if t == nil {
		return "", false
	}
	s, ok := t.Value.(ast.String)
	return string(s), ok
}

// How each data.aisecops entry loosens: a set whose entries make a rule
// apply loosens when one goes; a set of things accepted loosens when one
// comes; a map of limits loosens when one rises or goes.
var (
	loosenedByRemoval  = []string{"outbound_classes", "injection_deny_classes", "state_changing_classes", "single_use_classes", "memory_source_types", "untrusted_trust_levels"}
	loosenedByAddition = []string{"accepted_policy_versions", "token_workload_namespaces", "tool_classes"}
	loosenedByRaise    = []string{"token_max_ttl_seconds"}
)

// diffData compares the bundles' data: data.aisecops entry by entry, and any
// other data file as a whole (its meaning is the team's: a change is growth
// until a human says otherwise).
func diffData(oldFS, newFS fs.FS) ([]Change, error) {
	od, err := dataFiles(oldFS)
	if err != nil {
		return nil, fmt.Errorf("authority: old bundle: %w", err)
	}
	nd, err := dataFiles(newFS)
	if err != nil {
		return nil, fmt.Errorf("authority: new bundle: %w", err)
	}
	var out []Change
	for _, p := range union(keys(od), keys(nd)) {
		if p == "data.json" || bytes.Equal(od[p], nd[p]) {
			continue
		}
		out = append(out, Change{Change: PolicyDataLoosened, Field: p, Old: "as before", New: "changed", Growth: true})
	}
	oa, err := aisecopsData(od["data.json"])
	if err != nil {
		return nil, fmt.Errorf("authority: old bundle: %w", err)
	}
	na, err := aisecopsData(nd["data.json"])
	if err != nil {
		return nil, fmt.Errorf("authority: new bundle: %w", err)
	}
	for _, k := range union(keys(oa), keys(na)) {
		o, n := oa[k], na[k]
		if reflect.DeepEqual(o, n) {
			continue
		}
		field := "data.aisecops." + k
		add := func(old, new string, growth bool) {
			code := PolicyDataLoosened
			if !growth {
				code = Narrowed
			}
			out = append(out, Change{Change: code, Field: field, Old: old, New: new, Growth: growth})
		}
		switch {
		case k == "policy_version":
			out = append(out, Change{Change: PolicyChanged, Field: field, Old: fmt.Sprint(o), New: fmt.Sprint(n)})
		case slices.Contains(loosenedByRemoval, k):
			os, ns := set(o), set(n)
			add(list(os), list(ns), len(minus(os, ns)) > 0)
		case slices.Contains(loosenedByAddition, k):
			os, ns := set(o), set(n)
			add(list(os), list(ns), len(minus(ns, os)) > 0)
		case slices.Contains(loosenedByRaise, k):
			raised := raisedLimits(o, n)
			add(compact(o), compact(n), len(raised) > 0)
		case k == "escalation":
			add(compact(o), compact(n), escalationLoosened(o, n))
		default:
			add(compact(o), compact(n), true)
		}
	}
	return out, nil
}

// dataFiles reads a bundle's data files by path.
func dataFiles(fsys fs.FS) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch path.Base(p) {
		case "data.json", "data.yaml", "data.yml":
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			out[p] = b
		}
		return nil
	})
	return out, err
}

// aisecopsData is the "aisecops" object of a root data.json.
func aisecopsData(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return map[string]any{}, nil
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("data.json: %w", err)
	}
	a, _ := doc["aisecops"].(map[string]any)
	if a == nil {
		a = map[string]any{}
	}
	return a, nil
}

// set reads a set written as a list or as an object of true values.
func set(v any) []string {
	var out []string
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			out = append(out, fmt.Sprint(e))
		}
	case map[string]any:
		for k, e := range x {
			if e == true {
				out = append(out, k)
			}
		}
	}
	sort.Strings(out)
	return out
}

// raisedLimits are the keys of a map of limits whose limit rose or went.
func raisedLimits(o, n any) []string {
	om, _ := o.(map[string]any)
	nm, _ := n.(map[string]any)
	var out []string
	for k, ov := range om {
		nv, ok := nm[k]
		if !ok {
			out = append(out, k)
			continue
		}
		of, _ := ov.(json.Number).Float64()
		nf, _ := nv.(json.Number).Float64()
		if nf > of {
			out = append(out, k)
		}
	}
	return out
}

// escalationLoosened: an escalation rule went, its E fell, or it now applies
// to fewer steps (a class left its when or after, or its after_trust, where
// empty matches any trust, now matches fewer).
func escalationLoosened(o, n any) bool {
	byName := func(v any) map[string]map[string]any {
		out := map[string]map[string]any{}
		list, _ := v.([]any)
		for _, e := range list {
			if r, ok := e.(map[string]any); ok {
				out[fmt.Sprint(r["name"])] = r
			}
		}
		return out
	}
	om, nm := byName(o), byName(n)
	for name, or := range om {
		nr, ok := nm[name]
		if !ok {
			return true
		}
		oe, _ := or["e"].(json.Number).Float64()
		ne, _ := nr["e"].(json.Number).Float64()
		if ne < oe {
			return true
		}
		for _, f := range []string{"when", "after"} {
			if len(minus(set(or[f]), set(nr[f]))) > 0 {
				return true
			}
		}
		ot, nt := set(or["after_trust"]), set(nr["after_trust"])
		if len(nt) > 0 && (len(ot) == 0 || len(minus(ot, nt)) > 0) {
			return true
		}
	}
	return false
}

func compact(v any) string {
	if v == nil {
		return "absent"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// union is the sorted distinct entries of a and b.
func union(a, b []string) []string {
	out := append(slices.Clone(a), b...)
	sort.Strings(out)
	return slices.Compact(out)
}
