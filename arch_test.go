package aisecops_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the architecture true: dependencies point
// inward. The stores know nothing of Envoy or the authz server, the control
// plane imports no authz code, the authz stages do not reach back into the
// server that runs them, and integration talks to the system over the network.
func TestDependencyDirection(t *testing.T) {
	t.Parallel()
	const mod = "github.com/aisecops/aisecops-envoy/"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}{{range .TestImports}} {{.}}{{end}}`, "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	under := func(p, prefix string) bool { return p == prefix || strings.HasPrefix(p, prefix+"/") }
	rules := []struct {
		applies   func(pkg string) bool
		forbidden []string
	}{
		{func(p string) bool { return under(p, "riskstore") }, []string{"extauthz", "xds", "cmd", "integration"}},
		{func(p string) bool { return under(p, "xds") }, []string{"extauthz", "riskstore", "cmd", "integration"}},
		{func(p string) bool { return strings.HasPrefix(p, "extauthz/") }, []string{"cmd", "integration"}},
		// httpapi, suite and replay drive the Server from outside, as its
		// callers.
		{func(p string) bool {
			return strings.HasPrefix(p, "extauthz/") && !under(p, "extauthz/httpapi") && !under(p, "extauthz/suite") && !under(p, "extauthz/replay")
		}, []string{"extauthz"}},
		{func(p string) bool { return under(p, "extauthz/plan") }, []string{"extauthz/capability", "extauthz/policy", "extauthz/egress", "riskstore"}},
		{func(p string) bool { return under(p, "extauthz/capability") }, []string{"extauthz/plan", "extauthz/policy", "extauthz/egress", "riskstore"}},
		{func(p string) bool { return under(p, "extauthz/egress") }, []string{"extauthz/plan", "extauthz/capability", "extauthz/policy", "riskstore"}},
		{func(p string) bool { return under(p, "extauthz/reason") }, []string{"extauthz", "riskstore", "xds", "cmd", "integration", "policies"}},
		{func(p string) bool { return under(p, "integration") }, []string{"extauthz", "riskstore"}},
		// internal/ holds test instruments (starting real processes) and
		// leaf helpers (secretfile): they import no product code.
		{func(p string) bool { return under(p, "internal") }, []string{"extauthz", "riskstore", "xds", "cmd", "integration"}},
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], mod)
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			imp = strings.TrimPrefix(imp, mod)
			for _, r := range rules {
				if !r.applies(pkg) {
					continue
				}
				for _, f := range r.forbidden {
					// "extauthz" alone means the server package, not its subpackages.
					bad := under(imp, f)
					if f == "extauthz" && strings.HasPrefix(pkg, "extauthz/") {
						bad = imp == "extauthz"
					}
					if bad && !under(imp, pkg) {
						t.Errorf("%s imports %s: dependencies must point inward", pkg, imp)
					}
				}
			}
		}
	}
}
