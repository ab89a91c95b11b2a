package policy

import (
	"math"
	"strconv"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Comparisons in the cache key. A run's cumulative risk changes at every
// step, so keyed by its value a long run would never hit the cache, yet the
// bundled policy only compares it with thresholds. When every reference to an
// input path P in the reachable modules is, whole, one operand of a
// comparison (>, >=, <, <=, ==, !=) whose other operand is another input
// path with constant keys, every rule sees P only through those comparisons, and
// each of their results follows from P.Compare(other) and
// ast.ValueEqual(P, other), exactly what OPA's comparison built-ins compute.
// The key then holds those signs instead of P's value. Any other use of P (or
// of a path above or below it) — an assignment, a function argument,
// unification, an import, a with target — keeps its value in the key.

// cmpOps are the comparison built-ins whose result follows from signs.
var cmpOps = map[string]bool{
	ast.GreaterThan.Name: true, ast.GreaterThanEq.Name: true,
	ast.LessThan.Name: true, ast.LessThanEq.Name: true,
	ast.Equal.Name: true, ast.NotEqual.Name: true,
}

// comparedPaths returns, for each of paths read only in comparisons, the
// other operands it is compared with: none at all when an operator might not
// be the built-in its name says or an operand might not be the input's value
// (see comparisonsAreBuiltins).
func comparedPaths(mods []*ast.Module, paths []ast.Ref) map[string][]*ast.Term {
	if !comparisonsAreBuiltins(mods) {
		return nil
	}
	// The operand terms of comparisons, with the operand each is compared with.
	operand := map[*ast.Term]*ast.Term{}
	for _, m := range mods {
		ast.WalkExprs(m, func(e *ast.Expr) bool {
			if !e.IsCall() || len(e.Operands()) != 2 || !cmpOps[e.Operator().String()] || len(e.With) > 0 {
				return false
			}
			ops := e.Operands()
			operand[ops[0]], operand[ops[1]] = ops[1], ops[0]
			return false
		})
	}
	type use struct {
		others []*ast.Term
		other  bool // used some other way
	}
	uses := map[string]*use{}
	for _, p := range paths {
		uses[p.String()] = &use{}
	}
	seen := map[*ast.Term]bool{}
	var walk func(x any)
	walk = func(x any) {
		ast.WalkTerms(x, func(t *ast.Term) bool {
			ref, ok := t.Value.(ast.Ref)
			if !ok || !ref.HasPrefix(ast.InputRootRef) {
				return false
			}
			// A term met twice is in some other place too (the parser
			// does not share terms, but nothing here relies on it).
			shared := seen[t]
			seen[t] = true
			for _, p := range paths {
				if !ref.HasPrefix(p) && !p.HasPrefix(constPrefix(ref)) {
					continue
				}
				u := uses[p.String()]
				other, cmp := operand[t]
				if !cmp || shared || !ref.Equal(p) || !constantOperand(other) {
					u.other = true
				} else {
					u.others = append(u.others, other)
				}
			}
			for _, k := range ref[1:] {
				walk(k) // keys can reference input too
			}
			return true
		})
	}
	for _, m := range mods {
		walk(m)
	}
	out := map[string][]*ast.Term{}
	for p, u := range uses {
		if u.other || len(u.others) == 0 {
			continue
		}
		var distinct []*ast.Term
		for _, o := range u.others {
			if !containsTerm(distinct, o) {
				distinct = append(distinct, o)
			}
		}
		out[p] = distinct
	}
	return out
}

// constantOperand: an input path with constant keys. Not a literal: OPA's
// rule index looks == literals up by hash, and number literals bring
// spellings whose equality is not transitive (three adversarial reviews
// found bypasses there, TestCacheAttacks); comparing a path with a literal
// keeps its value in the key, which costs nothing when the value is as
// steady as a flag. Two input paths compared are never indexed, and each
// pair's outcome is computed exactly as the built-in computes it.
func constantOperand(t *ast.Term) bool {
	v, ok := t.Value.(ast.Ref)
	return ok && v.HasPrefix(ast.InputRootRef) && len(v) > 1 && len(constPrefix(v)) == len(v)
}

// containsTerm compares operands by their text, not by value: OPA's number
// equality is not transitive (0.1 == 0.10 exactly, 0.10 ==
// 0.10000000000000000000000010 by float64, yet 0.1 is not the latter), so
// one operand cannot stand for another it equals (found by an adversarial
// review).
func containsTerm(ts []*ast.Term, t *ast.Term) bool {
	for _, x := range ts {
		if x.Value.String() == t.Value.String() {
			return true
		}
	}
	return false
}

// signs encodes, for a present value v, its order against each operand as
// OPA's comparison built-ins compute it (Value.Compare for >, >=, <, <=;
// ast.ValueEqual for == and !=): '<', '>', '=' (equal), '~' (neither: were the
// two ever to disagree) or '?' for an operand input lacks.
//
// A number beyond float64's range keeps its literal in the key: OPA's rule
// index looks an == constant up by the number's hash, which for such numbers
// is the literal's text, so 1e400 and 10e399 — equal by Compare and
// ValueEqual — match different rules (found by an adversarial review). For
// the same reason '=' also needs the two hashes to agree.
func signs(input, v ast.Value, others []*ast.Term) string {
	if !finiteNumber(v) {
		return "!" + v.String()
	}
	fv, vNum := numberFloat(v)
	b := make([]byte, len(others))
	for i, o := range others {
		ov := o.Value
		if ref, ok := ov.(ast.Ref); ok {
			found, err := input.Find(ref[1:])
			if err != nil {
				b[i] = '?'
				continue
			}
			ov = found
		}
		if !finiteNumber(ov) {
			return "!" + v.String()
		}
		// Two numbers whose correctly rounded float64s differ compare as
		// those floats do: rounding is monotonic, so the exact decimals
		// are in the same order (and OPA's exact comparison, which would
		// parse both into big.Rat, agrees). Equal floats go to OPA.
		if fo, ok := numberFloat(ov); ok && vNum && fv != fo {
			if fv < fo {
				b[i] = '<'
			} else {
				b[i] = '>'
			}
			continue
		}
		switch c := v.Compare(ov); {
		case c < 0:
			b[i] = '<'
		case c > 0:
			b[i] = '>'
		case ast.ValueEqual(v, ov) && v.Hash() == ov.Hash():
			b[i] = '=' // == and != use Equal, the others Compare
		default:
			b[i] = '~'
		}
	}
	return string(b)
}

// numberFloat is v as the float64 nearest to it, when v is a number that
// parses as a finite one.
func numberFloat(v ast.Value) (float64, bool) {
	n, ok := v.(ast.Number)
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(n), 64)
	return f, err == nil && !math.IsInf(f, 0) && !math.IsNaN(f)
}

// finiteNumber: v is not a number, or one a float64 holds.
func finiteNumber(v ast.Value) bool {
	n, ok := v.(ast.Number)
	if !ok {
		return true
	}
	f, err := strconv.ParseFloat(string(n), 64)
	return err == nil && !math.IsInf(f, 0) && !math.IsNaN(f)
}

// comparisonsAreBuiltins: in mods, `x > y` can only be OPA's built-in on the
// input's own values. Not so when a rule, function or import is named like a
// comparison (the name resolves to it, infix included), or when any `with`
// is used: `with gt as f` replaces the built-in, and `with input.p as v`
// replaces an operand of comparisons evaluated under it, in any rule it
// reaches (found by an adversarial review; each case is in
// TestCacheAttacks).
func comparisonsAreBuiltins(mods []*ast.Module) bool {
	for _, m := range mods {
		for _, imp := range m.Imports {
			if cmpOps[imp.Alias.String()] {
				return false
			}
			if ref, ok := imp.Path.Value.(ast.Ref); ok && len(ref) > 0 {
				if s, ok := ref[len(ref)-1].Value.(ast.String); ok && cmpOps[string(s)] {
					return false
				}
			}
		}
		for _, r := range m.Rules {
			if ref := r.Head.Ref(); len(ref) > 0 && cmpOps[ref[0].Value.String()] {
				return false
			}
		}
		with := false
		ast.WalkExprs(m, func(e *ast.Expr) bool {
			with = with || len(e.With) > 0
			return with
		})
		if with {
			return false
		}
	}
	return true
}
