// Package ci_test keeps the CI definitions in examples/ci runnable: it reads
// every aisecops command the GitHub Actions workflow and the GitLab file run
// and runs it, with the example inputs beside them, against a freshly built
// aisecops binary.
package ci_test

import (
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/policies"
)

// buildAisecops builds the binary once for the test.
func buildAisecops(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "aisecops")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/aisecops/aisecops-envoy/cmd/aisecops").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// workspace lays out a repository as the CI definitions expect it: the
// example inputs of examples/ci, and the bundled policies as the team's
// bundle in this release and the previous one.
func workspace(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"aisecops/policies", "previous/aisecops/policies"} {
		if err := os.CopyFS(filepath.Join(dir, p), policies.FS()); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// scripts returns every shell script of a CI file: the run of each GitHub
// Actions step, or the before_script, script and after_script of each GitLab
// job.
func scripts(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s is not YAML: %v", file, err)
	}
	var out []string
	if jobs, ok := doc["jobs"].(map[string]any); ok { // GitHub Actions
		for _, j := range jobs {
			steps, _ := j.(map[string]any)["steps"].([]any)
			for _, s := range steps {
				if run, ok := s.(map[string]any)["run"].(string); ok {
					out = append(out, run)
				}
			}
		}
		return out
	}
	for _, j := range doc { // GitLab: every job is a map with a script
		job, ok := j.(map[string]any)
		if !ok {
			continue
		}
		for _, key := range []string{"before_script", "script", "after_script"} {
			lines, _ := job[key].([]any)
			for _, l := range lines {
				if s, ok := l.(string); ok {
					out = append(out, s)
				}
			}
		}
	}
	return out
}

// aisecopsCommands are the aisecops command lines of the scripts, as
// argument lists (continuation lines joined; the example commands use no
// quoting or variables, which this test keeps true).
func aisecopsCommands(t *testing.T, file string) [][]string {
	t.Helper()
	var out [][]string
	for _, s := range scripts(t, file) {
		s = strings.ReplaceAll(s, "\\\n", " ")
		for _, line := range strings.Split(s, "\n") {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "aisecops ") {
				continue
			}
			if strings.ContainsAny(line, "$\"'`|;&<>") {
				t.Errorf("%s: %q uses shell syntax; keep aisecops commands literal so they can be checked", file, line)
				continue
			}
			out = append(out, strings.Fields(line)[1:])
		}
	}
	return out
}

func TestCIDefinitionsRun(t *testing.T) {
	bin := buildAisecops(t)
	for _, file := range []string{"github-actions.yml", "gitlab-ci.yml"} {
		t.Run(file, func(t *testing.T) {
			cmds := aisecopsCommands(t, file)
			has := func(what string, ok func([]string) bool) {
				if !slices.ContainsFunc(cmds, ok) {
					t.Errorf("%s runs no %s", file, what)
				}
			}
			has("policy test", func(a []string) bool { return len(a) > 1 && a[0] == "policy" && a[1] == "test" })
			has("shipped threat suite", func(a []string) bool { return a[0] == "test" && len(positional(a[1:])) == 0 })
			has("team suite", func(a []string) bool { return a[0] == "test" && len(positional(a[1:])) > 0 })
			has("chain simulation", func(a []string) bool { return len(a) > 1 && a[0] == "simulate" && a[1] == "chain" })
			has("permission audit since the previous release", func(a []string) bool {
				return len(a) > 1 && a[0] == "audit" && a[1] == "permissions" && slices.Contains(a, "--since")
			})

			dir := workspace(t)
			home := t.TempDir()
			for _, args := range cmds {
				out, code := runIn(t, bin, dir, home, args)
				if code != 0 {
					t.Errorf("aisecops %s: exit %d, want 0\n%s", strings.Join(args, " "), code, out)
				}
				// The audit fails the release without the acknowledged file:
				// the example release does grow authority.
				if i := slices.Index(args, "--acknowledged"); i >= 0 {
					without := slices.Delete(slices.Clone(args), i, i+2)
					if out, code := runIn(t, bin, dir, home, without); code != 1 || !strings.Contains(out, "GROWTH support-agent") {
						t.Errorf("aisecops %s: exit %d, want 1 with the growths listed\n%s", strings.Join(without, " "), code, out)
					}
				}
			}
			for _, name := range []string{"aisecops-threats.xml", "aisecops-team.xml"} {
				data, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				var doc struct {
					Tests    int `xml:"tests,attr"`
					Failures int `xml:"failures,attr"`
				}
				if err := xml.Unmarshal(data, &doc); err != nil || doc.Tests == 0 || doc.Failures != 0 {
					t.Errorf("%s: %+v %v", name, doc, err)
				}
			}
			if entries, _ := os.ReadDir(home); len(entries) != 0 {
				t.Errorf("the CI commands wrote into AISECOPS_HOME: %v", entries)
			}
		})
	}
}

// positional are the arguments that are neither flags nor flag values (every
// flag of the CI commands but --json takes a value).
func positional(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "--json":
		case strings.HasPrefix(args[i], "-"):
			if !strings.Contains(args[i], "=") {
				i++
			}
		default:
			out = append(out, args[i])
		}
	}
	return out
}

// runIn runs the binary in dir and returns its output and exit code.
func runIn(t *testing.T, bin, dir, home string, args []string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AISECOPS_HOME="+home)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("aisecops %s: %v", strings.Join(args, " "), err)
	return "", -1
}
