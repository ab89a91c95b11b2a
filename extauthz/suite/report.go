package suite

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
)

// WriteText writes the report for a reader: every case and step with what
// was expected and what the pipeline answered, the threat classes, the totals.
func (r *Report) WriteText(w io.Writer) error {
	p := &printer{w: w}
	p.f("routes %s, policy %s (%s)\n", r.Routes, r.PolicyVersion, short(r.PolicyHash))
	for _, s := range r.Suites {
		p.f("\nsuite %q (%s)\n", s.Name, s.Source)
		for _, c := range s.Cases {
			p.f("  %s %s%s\n", verdict(c.Pass), classTag(c.Class), c.Name)
			for _, st := range c.Steps {
				p.f("      step %d %s %s %s: want %s, got %s\n", st.Index, verdict(st.Pass), st.Agent, st.Tool,
					describeWant(st.Expect), describeGot(st.Got))
				for _, d := range st.Diff {
					p.f("             %s\n", d)
				}
			}
		}
	}
	if len(r.Classes) > 0 {
		p.f("\nthreat classes\n")
		for _, c := range r.Classes {
			state := "stopped"
			if !slices.Contains(ThreatClasses, c.ID) {
				state = "held"
			}
			switch {
			case c.Cases == 0:
				state = "no cases"
			case !c.Stopped:
				state = fmt.Sprintf("NOT %s (%d of %d cases failed)", strings.ToUpper(state), c.Failed, c.Cases)
			}
			p.f("  %-4s %-40s %s\n", c.ID, c.Name, state)
		}
		m := r.Maturity
		p.f("threat classes stopped: %d/%d; maturity level %d evidence: %s\n", m.Stopped, m.Of, m.Level, m.Basis)
	}
	p.f("\n%d cases: %d passed, %d failed\n", r.Passed+r.Failed, r.Passed, r.Failed)
	return p.err
}

// WriteJSON writes the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// JUnit XML, as CI systems read it: one testsuite per suite, one testcase per
// case, a failure naming each step that answered otherwise.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Time       string          `xml:"time,attr"`
	Properties []junitProperty `xml:"properties>property,omitempty"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML.
func (r *Report) WriteJUnit(w io.Writer) error {
	out := junitSuites{Name: "aisecops test", Tests: r.Passed + r.Failed, Failures: r.Failed}
	for _, s := range r.Suites {
		js := junitSuite{Name: s.Name, Tests: len(s.Cases), Properties: []junitProperty{
			{"source", s.Source}, {"routes", r.Routes}, {"policy_version", r.PolicyVersion}, {"policy_hash", r.PolicyHash},
		}}
		var total float64
		for _, c := range s.Cases {
			secs := c.Duration.Seconds()
			total += secs
			classname := "aisecops." + s.Name
			if c.Class != "" {
				classname += "." + c.Class
			}
			jc := junitCase{Name: classTag(c.Class) + c.Name, Classname: classname, Time: fmt.Sprintf("%.3f", secs)}
			if !c.Pass {
				js.Failures++
				lines := c.Failures()
				jc.Failure = &junitFailure{Message: lines[0], Type: "mismatch", Text: strings.Join(lines, "\n")}
			}
			js.Cases = append(js.Cases, jc)
		}
		js.Time = fmt.Sprintf("%.3f", total)
		out.Suites = append(out.Suites, js)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func verdict(pass bool) string {
	if pass {
		return "PASS"
	}
	return "FAIL"
}

func classTag(c string) string {
	if c == "" {
		return ""
	}
	return "[" + c + "] "
}

func describeWant(e Expect) string {
	s := e.Decision
	if len(e.Reasons) > 0 {
		s += " " + codes(e.Reasons)
	}
	if e.StepRisk != nil {
		s += fmt.Sprintf(" step %.4g", *e.StepRisk)
	}
	if e.RiskTotal != nil {
		s += fmt.Sprintf(" total %.4g", *e.RiskTotal)
	}
	return s
}

func describeGot(o Outcome) string {
	if o.Decision == "" {
		return "nothing"
	}
	return fmt.Sprintf("%s %s step %.4g total %.4g", o.Decision, codes(o.Reasons), o.StepRisk, o.RiskTotal)
}

// short abbreviates a content hash for a reader.
func short(h string) string {
	if len(h) > 19 {
		return h[:19] + "…"
	}
	return h
}
