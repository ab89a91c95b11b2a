package policy

import (
	"context"
	"strings"
	"testing"
)

// TestRegoUnitTests runs the bundled Rego unit tests, so `go test` covers them.
func TestRegoUnitTests(t *testing.T) {
	t.Parallel()
	results, err := RunTests(context.Background(), "")
	for _, r := range results {
		if !r.Pass {
			t.Errorf("rego %s.%s: failed %s", r.Package, r.Name, r.Error)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(results) < 40 {
		t.Errorf("ran %d Rego tests; the bundle has more", len(results))
	}
}

// TestRegoUnitTestsUseRestrictedCapabilities: a Rego test calling a builtin
// production refuses must not pass.
func TestRegoUnitTestsUseRestrictedCapabilities(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{
		"p.rego":      "package p\n\nx := 1\n",
		"p_test.rego": "package p_test\n\nimport rego.v1\n\ntest_now if time.now_ns() > 0\n",
	})
	_, err := RunTests(context.Background(), dir)
	if err == nil || !strings.Contains(err.Error(), "time.now_ns") {
		t.Fatalf("RunTests = %v, want an undefined function time.now_ns error", err)
	}
}

// TestRegoUnitTestsReportFailures: a failing Rego test fails RunTests.
func TestRegoUnitTestsReportFailures(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{
		"p.rego":      "package p\n\nx := 1\n",
		"p_test.rego": "package p_test\n\nimport rego.v1\n\ntest_ok if data.p.x == 1\n\ntest_bad if data.p.x == 2\n\ntest_strict if lower(input.x) == \"\" with input as {\"x\": [1]}\n",
	})
	results, err := RunTests(context.Background(), dir)
	if err == nil {
		t.Fatal("RunTests with failing tests returned no error")
	}
	got := map[string]bool{}
	for _, r := range results {
		got[r.Name] = r.Pass
	}
	if !got["test_ok"] || got["test_bad"] || got["test_strict"] || len(got) != 3 {
		t.Errorf("results = %v, want only test_ok passing", got)
	}
}
