package runs

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Node and edge kinds.
const (
	KindRun    = "run"
	KindStep   = "step"
	KindTool   = "tool"
	KindSource = "source"

	EdgeSequence   = "sequence"   // run → its first step, step → the next
	EdgeCalls      = "calls"      // step → the tool it called
	EdgeProvenance = "provenance" // a source or a linked run → the step whose context it was
)

// sourceAgentOutput is the provenance source type naming another agent's run
// (extauthz.SourceAgentOutput; repeated, as this package must not import the
// server).
const sourceAgentOutput = "agent_output"

// maxLabel bounds a label, in runes.
const maxLabel = 200

// Node is a node of a run's graph. IDs are the graph's own (r1, s1, t1, p1):
// nothing an agent wrote is ever an id.
type Node struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`
	Label string `json:"label"`
}

// Edge is an edge of a run's graph.
type Edge struct {
	From string `json:"from"`
	To   string `json:"to"`
	Kind string `json:"kind"`
}

// Graph is a run's execution graph (AISecOps v1.0 section 27): its steps in
// sequence, the tools they called, the provenance of their context, and the
// runs of other agents whose output they consumed (section 22.2), followed
// up to a depth and a size. Truncated says a bound was reached.
type Graph struct {
	RunID     string `json:"run_id"`
	AgentID   string `json:"agent_id"`
	Nodes     []Node `json:"nodes"`
	Edges     []Edge `json:"edges"`
	Truncated bool   `json:"truncated"`
}

// BuildGraph builds the graph of run ref, following its links depth runs
// deep (at most MaxGraphDepth), with at most MaxGraphRuns runs and
// MaxGraphSteps steps. Links go upstream only: a graph shows the runs a run
// consumed, not the runs that later consumed it.
func BuildGraph(ctx context.Context, s Store, ref riskstore.RunRef, depth int) (*Graph, error) {
	depth = min(max(depth, 0), MaxGraphDepth)
	b := &builder{g: &Graph{RunID: ref.ID, AgentID: ref.Agent, Nodes: []Node{}, Edges: []Edge{}},
		runs: map[riskstore.RunRef]string{}, tools: map[string]string{}, sources: map[[3]string]string{}}
	type item struct {
		ref   riskstore.RunRef
		depth int
	}
	queue := []item{{ref, 0}}
	expanded := map[riskstore.RunRef]bool{}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		if expanded[it.ref] {
			continue
		}
		expanded[it.ref] = true
		tl, err := ReadTimeline(ctx, s, it.ref)
		if err != nil {
			if it.ref == ref || !errors.Is(err, ErrNoRun) {
				return nil, err
			}
			continue // a linked run whose log is gone: its node stays, alone
		}
		prev := b.run(it.ref)
		for _, st := range tl.Steps {
			if b.steps == MaxGraphSteps {
				b.g.Truncated = true
				break
			}
			b.steps++
			step := b.node(KindStep, stepLabel(st))
			b.edge(prev, step, EdgeSequence)
			prev = step
			if st.Tool != "" {
				b.edge(step, b.tool(st.Tool), EdgeCalls)
			}
			linked := map[string]bool{}
			for _, l := range st.LinkedRuns {
				agent, id, ok := strings.Cut(l, "@")
				if !ok || agent == "" || id == "" {
					continue
				}
				lref := riskstore.RunRef{Agent: agent, ID: id}
				linked[l] = true
				_, known := b.runs[lref]
				if !known && len(b.runs) == MaxGraphRuns {
					b.g.Truncated = true
					continue
				}
				b.edge(b.run(lref), step, EdgeProvenance)
				if expanded[lref] {
					continue
				}
				if it.depth < depth {
					queue = append(queue, item{lref, it.depth + 1})
				} else {
					b.g.Truncated = true
				}
			}
			for _, p := range st.Provenance {
				if p.SourceType == sourceAgentOutput && linked[p.SourceName] {
					continue // drawn as the linked run
				}
				b.edge(b.source(p.SourceType, p.SourceName, p.TrustLevel), step, EdgeProvenance)
			}
		}
	}
	return b.g, nil
}

type builder struct {
	g       *Graph
	runs    map[riskstore.RunRef]string
	tools   map[string]string
	sources map[[3]string]string
	steps   int
	n       map[string]int
}

var idPrefix = map[string]string{KindRun: "r", KindStep: "s", KindTool: "t", KindSource: "p"}

func (b *builder) node(kind, label string) string {
	if b.n == nil {
		b.n = map[string]int{}
	}
	b.n[kind]++
	id := idPrefix[kind] + strconv.Itoa(b.n[kind])
	b.g.Nodes = append(b.g.Nodes, Node{ID: id, Kind: kind, Label: clip(label)})
	return id
}

func (b *builder) edge(from, to, kind string) {
	b.g.Edges = append(b.g.Edges, Edge{From: from, To: to, Kind: kind})
}

func (b *builder) run(ref riskstore.RunRef) string {
	if id, ok := b.runs[ref]; ok {
		return id
	}
	id := b.node(KindRun, ref.Agent+"@"+ref.ID)
	b.runs[ref] = id
	return id
}

func (b *builder) tool(name string) string {
	if id, ok := b.tools[name]; ok {
		return id
	}
	id := b.node(KindTool, name)
	b.tools[name] = id
	return id
}

func (b *builder) source(typ, name, trust string) string {
	k := [3]string{typ, name, trust}
	if id, ok := b.sources[k]; ok {
		return id
	}
	id := b.node(KindSource, typ+": "+name+" ("+trust+")")
	b.sources[k] = id
	return id
}

func stepLabel(st StepJSON) string {
	tool := st.Tool
	if tool == "" {
		tool = "(no tool)"
	}
	return fmt.Sprintf("#%d %s %s risk %s", st.Seq, tool, st.Decision, number(st.StepRisk.Step))
}

// number prints a risk to at most four decimals: 0.275, 0.96, 0.1.
func number(v float64) string {
	return strconv.FormatFloat(math.Round(v*1e4)/1e4, 'f', -1, 64)
}

// clip makes a label valid UTF-8 without control, line-breaking or
// bidirectional-override characters (which could forge lines or reorder
// what an operator reads), at most maxLabel runes.
func clip(s string) string {
	if utf8.RuneCountInString(s) > maxLabel {
		s = string([]rune(strings.ToValidUTF8(s, "\uFFFD"))[:maxLabel]) + "…"
	}
	return clean(s)
}

// clean replaces what clip removes, without shortening.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Bidi_Control) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// DOT renders the graph in Graphviz's language. Ids are the graph's own;
// labels are quoted strings in which only '"' and '\' are special, both
// escaped, so no label can end its string (or use an escape such as \N).
func (g *Graph) DOT() string {
	var sb strings.Builder
	sb.WriteString("digraph aisecops_run {\n  rankdir=LR;\n")
	shapes := map[string]string{KindRun: "doubleoctagon", KindStep: "box", KindTool: "ellipse", KindSource: "note"}
	for _, n := range g.Nodes {
		fmt.Fprintf(&sb, "  %s [label=%s, shape=%s];\n", n.ID, dotQuote(n.Label), shapes[n.Kind])
	}
	styles := map[string]string{EdgeSequence: "solid", EdgeCalls: "dashed", EdgeProvenance: "bold"}
	for _, e := range g.Edges {
		fmt.Fprintf(&sb, "  %s -> %s [label=%s, style=%s];\n", e.From, e.To, dotQuote(e.Kind), styles[e.Kind])
	}
	sb.WriteString("}\n")
	return sb.String()
}

func dotQuote(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range clean(s) {
		if r == '"' || r == '\\' {
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	sb.WriteByte('"')
	return sb.String()
}

// Mermaid renders the graph as a Mermaid flowchart. Labels are quoted, and
// every character but letters, digits and " ._:/@+=,-" is written as a
// Mermaid entity code (#34; for '"'), so a label cannot close its quote,
// start a directive (%%), draw an edge (-->), or carry markup.
func (g *Graph) Mermaid() string {
	var sb strings.Builder
	sb.WriteString("flowchart LR\n")
	shapes := map[string][2]string{KindRun: {`(["`, `"])`}, KindStep: {`["`, `"]`}, KindTool: {`{{"`, `"}}`}, KindSource: {`[("`, `")]`}}
	for _, n := range g.Nodes {
		sh := shapes[n.Kind]
		fmt.Fprintf(&sb, "  %s%s%s%s\n", n.ID, sh[0], mermaidText(n.Label), sh[1])
	}
	arrows := map[string]string{EdgeSequence: "-->", EdgeCalls: "-.->", EdgeProvenance: "==>"}
	for _, e := range g.Edges {
		fmt.Fprintf(&sb, "  %s %s|%s| %s\n", e.From, arrows[e.Kind], e.Kind, e.To)
	}
	return sb.String()
}

func mermaidText(s string) string {
	var sb strings.Builder
	for _, r := range clean(s) {
		if r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" ._:/@+=,-", r)) {
			sb.WriteRune(r)
			continue
		}
		fmt.Fprintf(&sb, "#%d;", r)
	}
	return sb.String()
}
