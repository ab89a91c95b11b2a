package policy

import (
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The decision cache. A bundle's decision is a pure function of the input:
// policies have no clock, network or randomness (Capabilities), and data is
// fixed for the bundle's life. So two inputs that agree on every value the
// bundle can read get the same decision, and the bundle may answer the second
// from the first without evaluating. Which values it can read is found by
// static analysis of its modules (inputPaths): the ground prefix of every
// reference to input. The cache key is those values, encoded in full (never a
// hash, so two keys are equal only when the values are): nothing a cache hit
// returns can differ from what an evaluation would, so it cannot turn a deny
// into an allow. A bundle that reads input as a whole, or under a
// non-constant key at the top, is not cached.
//
// Only successful evaluations are cached (errors and timeouts are not), the
// cache is bounded (cleared when full) and dies with its bundle on reload.

// decisionCacheSize bounds one bundle's cache.
const decisionCacheSize = 8192

type decisionCache struct {
	paths []ast.Ref // ground prefixes of the input references, sorted, none a prefix of another
	// cmp[i], when set, are the operands paths[i] is only ever compared
	// with: the key holds the comparisons' signs, not the value
	// (cache_cmp.go).
	cmp [][]*ast.Term
	// want is what of the input the key reads: paths and the input refs
	// among their operands. A lookup builds only that (inputValueFor).
	want *want

	mu sync.RWMutex
	m  map[string]Decision
}

// newDecisionCache returns nil when mods can read input as a whole.
func newDecisionCache(mods []*ast.Module) *decisionCache {
	mods = reachable(mods, ast.MustParseRef(Query))
	paths, ok := inputPaths(mods)
	if !ok {
		return nil
	}
	c := &decisionCache{paths: paths, cmp: make([][]*ast.Term, len(paths)), m: make(map[string]Decision)}
	compared := comparedPaths(mods, paths)
	refs := slices.Clone(paths)
	for i, p := range paths {
		c.cmp[i] = compared[p.String()]
		for _, o := range c.cmp[i] {
			if r, ok := o.Value.(ast.Ref); ok {
				refs = append(refs, r)
			}
		}
	}
	c.want = wantPaths(refs)
	return c
}

// reachable returns the modules whose rules an evaluation of query can reach:
// those of a package the query names (or one under it, or above it), then,
// until nothing is added, those of a package a reachable module refers to —
// by import, rule body, function call or with. A reference is compared by its
// ground prefix, so data[x] or bare data reaches every module. What no
// reference reaches cannot take part in the decision (the token service's
// rules read input.request.run_id, a Check's does not).
func reachable(mods []*ast.Module, query ast.Ref) []*ast.Module {
	refs := []ast.Ref{query}
	in := make([]bool, len(mods))
	var out []*ast.Module
	for len(refs) > 0 {
		r := refs[len(refs)-1]
		refs = refs[:len(refs)-1]
		for i, m := range mods {
			pkg := m.Package.Path
			if in[i] || !(pkg.HasPrefix(r) || r.HasPrefix(pkg)) {
				continue
			}
			in[i] = true
			out = append(out, m)
			var walk func(x any)
			walk = func(x any) {
				ast.WalkTerms(x, func(t *ast.Term) bool {
					switch v := t.Value.(type) {
					case ast.Ref:
						if !v.HasPrefix(ast.DefaultRootRef) {
							return false
						}
						refs = append(refs, constPrefix(v))
						for _, k := range v[1:] {
							walk(k) // keys can refer to data too
						}
						return true
					case ast.Var:
						if v.Equal(ast.DefaultRootDocument.Value) {
							refs = append(refs, ast.DefaultRootRef) // bare data
						}
					}
					return false
				})
			}
			for _, imp := range m.Imports {
				walk(imp) // the package clause is not a reference
			}
			for _, r := range m.Rules {
				walk(r)
			}
		}
	}
	return out
}

// constPrefix is r up to its first key that is not a string constant. Not
// Ref.GroundPrefix: a key that is itself a reference (data[input.k]) counts
// as ground there, yet names any package.
func constPrefix(r ast.Ref) ast.Ref {
	n := 1
	for n < len(r) {
		if _, str := r[n].Value.(ast.String); !str {
			break
		}
		n++
	}
	return r[:n]
}

// inputPaths lists the ground prefixes of every reference to input in mods,
// imports and `with` targets included, reduced to those no other one is a
// prefix of. ok is false when some reference reads input as a whole: bare
// `input`, or a non-constant first key.
func inputPaths(mods []*ast.Module) (paths []ast.Ref, ok bool) {
	ok = true
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		switch v := x.(type) {
		case ast.Ref:
			if !v.HasPrefix(ast.InputRootRef) {
				return false
			}
			p := constPrefix(v)
			if len(p) == 1 {
				ok = false
			}
			paths = append(paths, p.Copy())
			for _, t := range v[1:] {
				vis.Walk(t) // keys can reference input too
			}
			return true
		case ast.Var:
			if v.Equal(ast.InputRootDocument.Value) {
				ok = false // bare input, e.g. a function argument
			}
		}
		return false
	})
	for _, m := range mods {
		vis.Walk(m)
	}
	if !ok {
		return nil, false
	}
	slices.SortFunc(paths, func(a, b ast.Ref) int { return a.Compare(b) })
	out := paths[:0]
	for _, p := range paths {
		if len(out) > 0 && p.HasPrefix(out[len(out)-1]) {
			continue // a longer path under one already read whole
		}
		out = append(out, p)
	}
	return out, true
}

// key encodes the values of input at the cache's paths. A missing value is
// encoded apart from every present one.
func (c *decisionCache) key(input ast.Value) string {
	var b strings.Builder
	for i, p := range c.paths {
		v, err := input.Find(p[1:])
		switch {
		case err != nil:
			b.WriteString("\x00-")
		case c.cmp[i] != nil:
			b.WriteString("\x00~")
			b.WriteString(signs(input, v, c.cmp[i]))
		default:
			b.WriteString("\x00+")
			b.WriteString(v.String())
		}
	}
	return b.String()
}

func (c *decisionCache) get(key string) (Decision, bool) {
	c.mu.RLock()
	d, ok := c.m[key]
	c.mu.RUnlock()
	if !ok {
		return Decision{}, false
	}
	return d.clone(), true
}

func (c *decisionCache) put(key string, d Decision) {
	d = d.clone()
	c.mu.Lock()
	if len(c.m) >= decisionCacheSize {
		clear(c.m)
	}
	c.m[key] = d
	c.mu.Unlock()
}

// clone copies what a caller could change: the reasons and obligations.
func (d Decision) clone() Decision {
	d.Reasons = slices.Clone(d.Reasons)
	if d.Obligations != nil {
		d.Obligations = maps.Clone(d.Obligations)
	}
	return d
}
