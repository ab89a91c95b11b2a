package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/aisecops/aisecops-envoy/policies"
)

// TestResult is the outcome of one Rego unit test (a test_* rule).
type TestResult struct {
	Package  string        `json:"package"`
	Name     string        `json:"name"`
	Pass     bool          `json:"pass"`
	Skip     bool          `json:"skip,omitempty"`
	Error    string        `json:"error,omitempty"` // evaluation error; empty for a plain failure
	Duration time.Duration `json:"duration"`
}

// RunTests runs the Rego unit tests (*_test.rego) of the bundle in dir, or of
// the embedded bundle when dir is "", with the same restricted capabilities and
// strict builtin errors production uses, so a test cannot pass with a builtin
// production refuses. It returns every result, sorted, and an error when the
// bundle does not load, has no tests, or any test failed or errored.
func RunTests(ctx context.Context, dir string) ([]TestResult, error) {
	var fsys fs.FS = policies.FS()
	if dir != "" {
		fsys = os.DirFS(dir)
	}
	caps := Capabilities()
	b, err := readBundle(fsys, caps, true)
	if err != nil {
		return nil, fmt.Errorf("policy: load tests: %w", err)
	}
	mods := make(map[string]*ast.Module, len(b.Modules))
	for _, m := range b.Modules {
		mods[m.Path] = m.Parsed
	}
	ch, err := tester.NewRunner().
		SetCompiler(ast.NewCompiler().WithCapabilities(caps).WithDefaultRegoVersion(ast.RegoV1)).
		SetDefaultRegoVersion(ast.RegoV1).
		SetStore(inmem.NewFromObject(b.Data)).
		SetModules(mods).
		RaiseBuiltinErrors(true).
		RunTests(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("policy: compile tests: %w", err)
	}
	var (
		out  []TestResult
		errs []error
	)
	for r := range ch {
		tr := TestResult{Package: r.Package, Name: r.Name, Pass: r.Pass(), Skip: r.Skip, Duration: r.Duration}
		if r.Error != nil {
			tr.Error = r.Error.Error()
		}
		if !tr.Pass && !tr.Skip {
			errs = append(errs, fmt.Errorf("%s.%s: %s", r.Package, r.Name, failText(tr)))
		}
		out = append(out, tr)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Package != out[j].Package {
			return out[i].Package < out[j].Package
		}
		return out[i].Name < out[j].Name
	})
	if len(out) == 0 {
		return nil, errors.New("policy: bundle has no tests")
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("policy: %d of %d tests failed: %w", len(errs), len(out), errors.Join(errs...))
	}
	return out, nil
}

func failText(r TestResult) string {
	if r.Error != "" {
		return "error: " + r.Error
	}
	return "failed"
}
