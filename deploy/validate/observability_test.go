package validate

import (
	"encoding/json"
	"fmt"
	"go/ast"
	goparser "go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// metric is one Prometheus metric the product's source registers.
type metric struct {
	name   string
	kind   string // Counter, Gauge, Histogram, Summary
	labels []string
}

// sourceMetrics reads every prometheus.New* call in the product's Go source
// (tests and deploy/ left out) and returns the metrics by name. A metric whose
// name is not a string literal is an error: the dashboard test could not see it.
func sourceMetrics(t *testing.T) map[string]metric {
	t.Helper()
	out := map[string]metric{}
	fset := token.NewFileSet()
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "deploy" || d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := goparser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "prometheus" {
				return true
			}
			kind, ok := strings.CutPrefix(sel.Sel.Name, "New")
			kind = strings.TrimSuffix(kind, "Vec")
			if !ok || !slices.Contains([]string{"Counter", "Gauge", "Histogram", "Summary"}, kind) || len(call.Args) == 0 {
				return true
			}
			m := metric{kind: kind}
			if lit, ok := call.Args[0].(*ast.CompositeLit); ok {
				for _, e := range lit.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok && fmt.Sprint(kv.Key) == "Name" {
						if s, ok := kv.Value.(*ast.BasicLit); ok {
							m.name, _ = strconv.Unquote(s.Value)
						}
					}
				}
			}
			if m.name == "" {
				t.Errorf("%s: %s with no literal Name", fset.Position(call.Pos()), sel.Sel.Name)
				return true
			}
			if len(call.Args) > 1 {
				if lit, ok := call.Args[1].(*ast.CompositeLit); ok {
					for _, e := range lit.Elts {
						if s, ok := e.(*ast.BasicLit); ok {
							l, _ := strconv.Unquote(s.Value)
							m.labels = append(m.labels, l)
						}
					}
				}
			}
			out[m.name] = m
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := out["aisecops_decisions_total"]; !ok {
		t.Fatalf("no aisecops_decisions_total among %d metrics found in the source", len(out))
	}
	return out
}

// series maps every series name Prometheus exposes to its metric: a histogram
// is scraped as name_bucket, name_sum and name_count.
func series(ms map[string]metric) map[string]metric {
	out := map[string]metric{}
	for _, m := range ms {
		out[m.name] = m
		if m.kind == "Histogram" || m.kind == "Summary" {
			out[m.name+"_sum"], out[m.name+"_count"] = m, m
		}
		if m.kind == "Histogram" {
			b := m
			b.labels = append(slices.Clone(m.labels), "le")
			out[m.name+"_bucket"] = b
		}
	}
	return out
}

// targetLabels are added by Prometheus to every scraped series.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

// grafanaVars stand in for the dashboard's variables so each query parses.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*")

// exprs returns every "expr" string anywhere in a dashboard.
func exprs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "expr" {
				out = append(out, s)
			} else {
				out = append(out, exprs(e)...)
			}
		}
	case []any:
		for _, e := range x {
			out = append(out, exprs(e)...)
		}
	}
	return out
}

// checkQuery parses one PromQL query and returns the series it reads, or the
// problems: unknown series, labels the series do not have.
func checkQuery(q string, known map[string]metric) ([]string, []error) {
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(q))
	if err != nil {
		return nil, []error{fmt.Errorf("%q: %w", q, err)}
	}
	var used []string
	var errs []error
	hasLabel := func(names []string, l string) bool {
		if slices.Contains(targetLabels, l) {
			return true
		}
		for _, n := range names {
			if !slices.Contains(known[n].labels, l) {
				return false
			}
		}
		return len(names) > 0
	}
	selectors := func(n parser.Node) []string {
		var names []string
		parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				names = append(names, vs.Name)
			}
			return nil
		})
		return names
	}
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		switch x := n.(type) {
		case *parser.VectorSelector:
			if _, ok := known[x.Name]; !ok {
				errs = append(errs, fmt.Errorf("%q: series %s is exported by nothing in the source", q, x.Name))
				return nil
			}
			used = append(used, x.Name)
			for _, m := range x.LabelMatchers {
				if m.Name != "__name__" && !hasLabel([]string{x.Name}, m.Name) {
					errs = append(errs, fmt.Errorf("%q: %s has no label %s", q, x.Name, m.Name))
				}
			}
		case *parser.AggregateExpr:
			names := selectors(x.Expr)
			for _, l := range x.Grouping {
				if !hasLabel(names, l) {
					errs = append(errs, fmt.Errorf("%q: groups by %s, which %v do not all have", q, l, names))
				}
			}
		}
		return nil
	})
	return used, errs
}

// TestGrafanaDashboard: the dashboard is valid JSON, every query parses as
// PromQL, reads only series the source exports with labels they carry, and
// every aisecops metric is on it.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../observability/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	for _, k := range []string{"title", "uid", "panels", "templating"} {
		if dash[k] == nil {
			t.Errorf("dashboard has no %s", k)
		}
	}
	ms := sourceMetrics(t)
	known := series(ms)
	qs := exprs(dash["panels"])
	if len(qs) == 0 {
		t.Fatal("no queries in the dashboard")
	}
	charted := map[string]bool{}
	for _, q := range qs {
		used, errs := checkQuery(q, known)
		for _, err := range errs {
			t.Error(err)
		}
		for _, s := range used {
			charted[known[s].name] = true
		}
	}
	// Template variables use Grafana's label_values(metric, label).
	lv := regexp.MustCompile(`label_values\((\w+),\s*(\w+)\)`)
	for _, m := range lv.FindAllStringSubmatch(string(data), -1) {
		if _, ok := known[m[1]]; !ok {
			t.Errorf("variable query label_values(%s, %s): no such series", m[1], m[2])
		}
	}
	var missing []string
	for name := range ms {
		if strings.HasPrefix(name, "aisecops_") && !charted[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics the service exports that the dashboard does not show: %v", missing)
	}
}

// TestDashboardCheckCatchesMistakes keeps checkQuery honest.
func TestDashboardCheckCatchesMistakes(t *testing.T) {
	t.Parallel()
	known := series(map[string]metric{
		"aisecops_decisions_total":        {name: "aisecops_decisions_total", kind: "Counter", labels: []string{"decision", "tool", "reason"}},
		"aisecops_check_duration_seconds": {name: "aisecops_check_duration_seconds", kind: "Histogram"},
	})
	good := []string{
		`sum by (decision) (rate(aisecops_decisions_total{job=~"$job"}[$__rate_interval]))`,
		`histogram_quantile(0.99, sum by (le) (rate(aisecops_check_duration_seconds_bucket[5m])))`,
	}
	for _, q := range good {
		if _, errs := checkQuery(q, known); len(errs) > 0 {
			t.Errorf("good query refused: %v", errs)
		}
	}
	bad := map[string]string{
		"unknown metric":        `rate(aisecops_decision_total[5m])`,
		"unknown label matcher": `aisecops_decisions_total{verdict="deny"}`,
		"unknown grouping":      `sum by (agent) (aisecops_decisions_total)`,
		"le on a counter":       `sum by (le) (aisecops_decisions_total)`,
		"not PromQL":            `sum by (decision) (`,
	}
	for name, q := range bad {
		if _, errs := checkQuery(q, known); len(errs) == 0 {
			t.Errorf("%s: %q accepted", name, q)
		}
	}
}

// TestCollectorConfig: the collector config has OTLP gRPC and HTTP receivers,
// every pipeline names components that are defined, and the ports are the ones
// the chart and the compose file publish. (The collector's own config loader
// is not used: its module graph is larger than all the rest together.)
func TestCollectorConfig(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../observability/otel-collector.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Extensions map[string]any            `json:"extensions"`
		Receivers  map[string]map[string]any `json:"receivers"`
		Processors map[string]any            `json:"processors"`
		Exporters  map[string]map[string]any `json:"exporters"`
		Service    struct {
			Extensions []string `json:"extensions"`
			Pipelines  map[string]struct {
				Receivers  []string `json:"receivers"`
				Processors []string `json:"processors"`
				Exporters  []string `json:"exporters"`
			} `json:"pipelines"`
		} `json:"service"`
	}
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatalf("otel-collector.yaml: %v", err)
	}
	endpoint := func(v any, path ...string) string { s, _ := dig(v, path...).(string); return s }
	for proto, want := range map[string]string{"grpc": "0.0.0.0:4317", "http": "0.0.0.0:4318"} {
		if got := endpoint(map[string]any(c.Receivers["otlp"]), "protocols", proto, "endpoint"); got != want {
			t.Errorf("otlp %s receiver on %q, want %s", proto, got, want)
		}
	}
	if got := endpoint(map[string]any(c.Exporters["prometheus"]), "endpoint"); got != "0.0.0.0:8889" {
		t.Errorf("prometheus exporter on %q, want 0.0.0.0:8889", got)
	}
	if _, ok := c.Exporters["debug"]; !ok {
		t.Error("no debug exporter")
	}
	for _, e := range c.Service.Extensions {
		if _, ok := c.Extensions[e]; !ok {
			t.Errorf("service extension %s is not defined", e)
		}
	}
	for _, sig := range []string{"traces", "metrics", "logs"} {
		p, ok := c.Service.Pipelines[sig]
		if !ok {
			t.Errorf("no %s pipeline", sig)
			continue
		}
		if len(p.Receivers) == 0 || len(p.Exporters) == 0 {
			t.Errorf("%s pipeline needs receivers and exporters", sig)
		}
		for _, r := range p.Receivers {
			if _, ok := c.Receivers[r]; !ok {
				t.Errorf("%s pipeline: receiver %s not defined", sig, r)
			}
		}
		for _, pr := range p.Processors {
			if _, ok := c.Processors[pr]; !ok {
				t.Errorf("%s pipeline: processor %s not defined", sig, pr)
			}
		}
		for _, e := range p.Exporters {
			if _, ok := c.Exporters[e]; !ok {
				t.Errorf("%s pipeline: exporter %s not defined", sig, e)
			}
		}
	}
}
