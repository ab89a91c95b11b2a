package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
)

// maxBundleBytes caps what a reload reads. The directory is operator input, but
// a runaway file (a log written into it) must not take the server down.
const maxBundleBytes = 16 << 20

// Bundle is one loaded, prepared policy bundle: its compiled queries, its
// version and the data the Go side reads (escalation rules, accepted policy
// versions). It is immutable once published, so a Check that takes one Bundle
// at its start decides, computes risk and audits under that one version even
// when a reload lands meanwhile.
type Bundle struct {
	query      rego.PreparedEvalQuery
	tokenQuery rego.PreparedEvalQuery // TokenQuery; undefined (so policy_error) in a bundle without it
	version    string
	hash       string
	escalation []EscalationRule
	accepted   []string
	readsArgs  bool           // some rule can see input.plan.arguments
	cache      *decisionCache // nil: the bundle reads input as a whole (cache.go)
}

func isTestFile(name string) bool { return strings.HasSuffix(name, "_test.rego") }

// bundleFile reports whether name is a file OPA's bundle reader uses.
func bundleFile(name string, withTests bool) bool {
	base := path.Base(name)
	switch {
	case strings.HasSuffix(base, ".rego"):
		return withTests || !isTestFile(base)
	case base == "data.json", base == "data.yaml", base == "data.yml", base == ".manifest":
		return true
	}
	return false
}

// readBundleFiles walks fsys and returns the bundle's file names (tests
// excluded) and a content hash over names and contents, so a rename, an edit or
// a new file changes it. It fails on a missing directory or an oversized bundle.
func readBundleFiles(fsys fs.FS) ([]string, string, error) {
	var names []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && bundleFile(p, false) {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	sort.Strings(names)
	h := sha256.New()
	total := 0
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, "", err
		}
		total += len(b)
		if total > maxBundleBytes {
			return nil, "", fmt.Errorf("bundle larger than %d bytes", maxBundleBytes)
		}
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(len(b))))
		h.Write([]byte{0})
		h.Write(b)
	}
	return names, "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// readBundle parses the bundle in fsys with the restricted capabilities.
func readBundle(fsys fs.FS, caps *ast.Capabilities, withTests bool) (*bundle.Bundle, error) {
	l := loader.NewFileLoader().
		WithFS(fsys).
		WithRegoVersion(ast.RegoV1).
		WithCapabilities(caps)
	if !withTests {
		l = l.WithFilter(func(_ string, info fs.FileInfo, _ int) bool {
			return !info.IsDir() && isTestFile(info.Name())
		})
	}
	b, err := l.AsBundle(".")
	if err != nil {
		return nil, err
	}
	if len(b.Modules) == 0 {
		return nil, errors.New("bundle has no policies")
	}
	return b, nil
}

// load reads, compiles and prepares the bundle. key identifies what was seen
// (the content hash, or the error when the files could not be read), so Watch
// retries only after a change.
func load(ctx context.Context, fsys fs.FS) (c *Bundle, key string, err error) {
	_, hash, err := readBundleFiles(fsys)
	if err != nil {
		return nil, "error: " + err.Error(), err
	}
	caps := Capabilities()
	b, err := readBundle(fsys, caps, false)
	if err != nil {
		return nil, hash, err
	}
	mods := make([]*ast.Module, 0, len(b.Modules))
	for _, m := range b.Modules {
		mods = append(mods, m.Parsed)
	}
	c = &Bundle{hash: hash, readsArgs: readsArguments(mods), cache: newDecisionCache(mods)}
	if err := c.readData(b.Data); err != nil {
		return nil, hash, err
	}
	if c.query, err = prepare(ctx, Query, b, caps); err != nil {
		return nil, hash, err
	}
	if c.tokenQuery, err = prepare(ctx, TokenQuery, b, caps); err != nil {
		return nil, hash, err
	}
	return c, hash, nil
}

// prepare compiles query against b with the restricted capabilities and strict
// builtin errors (a type error in a builtin must fail the evaluation, not make a
// deny rule silently undefined).
func prepare(ctx context.Context, query string, b *bundle.Bundle, caps *ast.Capabilities) (rego.PreparedEvalQuery, error) {
	return rego.New(
		rego.Query(query),
		rego.ParsedBundle("aisecops", b),
		rego.Capabilities(caps),
		rego.SetRegoVersion(ast.RegoV1),
		rego.StoreReadAST(true),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
}

// readData takes data.aisecops.{policy_version, accepted_policy_versions,
// escalation} into Go types, strictly: a malformed rule rejects the bundle
// rather than silently changing risk.
func (c *Bundle) readData(data map[string]any) error {
	c.version = c.hash
	ns, _ := data["aisecops"].(map[string]any)
	if ns == nil {
		return nil
	}
	var errs []error
	if v, ok := ns["policy_version"]; ok {
		s, isStr := v.(string)
		if !isStr || s == "" {
			errs = append(errs, errors.New("data.aisecops.policy_version: must be a non-empty string"))
		} else {
			c.version = s
		}
	}
	if v, ok := ns["accepted_policy_versions"]; ok {
		if err := strictJSON(v, &c.accepted); err != nil {
			errs = append(errs, fmt.Errorf("data.aisecops.accepted_policy_versions: %w", err))
		}
	}
	if v, ok := ns["escalation"]; ok {
		if err := exactKeys(v, "name", "when", "after", "after_trust", "e"); err != nil {
			errs = append(errs, fmt.Errorf("data.aisecops.escalation: %w", err))
		} else if err := strictJSON(v, &c.escalation); err != nil {
			errs = append(errs, fmt.Errorf("data.aisecops.escalation: %w", err))
		}
		errs = append(errs, validateEscalation(c.escalation)...)
	}
	return errors.Join(errs...)
}

// exactKeys checks that v is a list of objects with no key outside keys.
// encoding/json matches field names case-insensitively, so "E" beside "e" would
// otherwise slip through DisallowUnknownFields and override it.
func exactKeys(v any, keys ...string) error {
	list, ok := v.([]any)
	if !ok {
		return fmt.Errorf("must be a list, not %T", v)
	}
	for i, x := range list {
		m, ok := x.(map[string]any)
		if !ok {
			return fmt.Errorf("[%d]: must be an object, not %T", i, x)
		}
		for k := range m {
			if !slices.Contains(keys, k) {
				return fmt.Errorf("[%d]: unknown field %q", i, k)
			}
		}
	}
	return nil
}

func strictJSON(v any, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(out)
}

func validateEscalation(rules []EscalationRule) []error {
	var errs []error
	seen := map[string]bool{}
	for i, r := range rules {
		p := fmt.Sprintf("data.aisecops.escalation[%d]", i)
		if r.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name: required", p))
		} else if seen[r.Name] {
			errs = append(errs, fmt.Errorf("%s.name: duplicate %q", p, r.Name))
		}
		seen[r.Name] = true
		if len(r.When) == 0 {
			errs = append(errs, fmt.Errorf("%s.when: required", p))
		}
		if len(r.After) == 0 {
			errs = append(errs, fmt.Errorf("%s.after: required", p))
		}
		if r.E < 1 || r.E > 3 {
			errs = append(errs, fmt.Errorf("%s.e: %v is outside [1, 3]", p, r.E))
		}
	}
	return errs
}

// Load compiles the bundle in fsys (*.rego and data.json at its root, tests
// ignored) with the same restricted capabilities as a served one: a
// candidate for a replay, which no Check is decided with.
func Load(ctx context.Context, fsys fs.FS) (*Bundle, error) {
	c, _, err := load(ctx, fsys)
	return c, err
}
