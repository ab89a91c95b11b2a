package authority

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Ack is one growth of authority the team has reviewed and accepts, as kept
// in the acknowledged file. It covers the growths with the same agent, tool
// and change; an empty field covers every field of that change.
type Ack struct {
	Agent  string `json:"agent,omitempty"`
	Tool   string `json:"tool,omitempty"`
	Change string `json:"change"`
	Field  string `json:"field,omitempty"`
	// Reason is why the team accepts it (a ticket, a review), for the record.
	Reason string `json:"reason,omitempty"`
}

func (a Ack) covers(c Change) bool {
	return c.Growth && a.Change == c.Change && a.Agent == c.Agent && a.Tool == c.Tool && (a.Field == "" || a.Field == c.Field)
}

// LoadAcks reads an acknowledged file: a YAML list of Ack, decoded strictly,
// every problem reported at once.
func LoadAcks(path string) ([]Ack, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("acknowledged: %w", err)
	}
	return ParseAcks(path, data)
}

// ParseAcks decodes an acknowledged file's content; name is used in messages.
func ParseAcks(name string, data []byte) ([]Ack, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil // an empty file acknowledges nothing
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var acks []Ack
	if err := dec.Decode(&acks); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var errs []error
	for i, a := range acks {
		if !slices.Contains(Growths, a.Change) {
			errs = append(errs, fmt.Errorf("[%d].change: %q is not one of %s", i, a.Change, strings.Join(Growths, ", ")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return acks, nil
}

// Report is a permission audit: what each agent may do in the new release
// and, against an earlier one, what changed.
type Report struct {
	Routes      string  `json:"routes"`
	Policy      *Bundle `json:"policy,omitempty"`
	Since       string  `json:"since,omitempty"`
	SincePolicy *Bundle `json:"since_policy,omitempty"`
	Agents      []Agent `json:"agents"`
	// Changes is empty without an earlier release to compare with.
	Changes        []Change `json:"changes,omitempty"`
	Growths        int      `json:"growths"`
	Unacknowledged int      `json:"unacknowledged"`
	// Stale are acknowledgements that cover nothing any more: the file
	// should lose them, so they cannot hide a later growth.
	Stale []Ack `json:"stale_acknowledgements,omitempty"`
}

// OK reports whether authority grew only where acknowledged.
func (r *Report) OK() bool { return r.Unacknowledged == 0 }

// Acknowledge marks the growths acks cover and counts the rest.
func (r *Report) Acknowledge(acks []Ack) {
	used := make([]bool, len(acks))
	r.Growths, r.Unacknowledged = 0, 0
	for i := range r.Changes {
		c := &r.Changes[i]
		if !c.Growth {
			continue
		}
		r.Growths++
		for j, a := range acks {
			if a.covers(*c) {
				c.Acknowledged, used[j] = &acks[j], true
				break
			}
		}
		if c.Acknowledged == nil {
			r.Unacknowledged++
		}
	}
	r.Stale = nil
	for j, a := range acks {
		if !used[j] {
			r.Stale = append(r.Stale, a)
		}
	}
}

// WriteJSON writes the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a reader.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	f := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	f("routes %s", r.Routes)
	if r.Policy != nil {
		f(", policy %s (%s)", r.Policy.Version, r.Policy.Hash)
	}
	f("\n")
	for _, a := range r.Agents {
		f("\nagent %s: thresholds approval %g halt %g; budgets %s; agent budgets %s", a.ID, a.Thresholds.Approval, a.Thresholds.Halt,
			budgets(a), agentBudgets(a))
		if len(a.Workloads) > 0 {
			f("; workloads %s", list(a.Workloads))
		}
		f("\n")
		for _, t := range a.Tools {
			line := fmt.Sprintf("  %-14s %-13s risk %-4g trust %-9s cost %-5g", t.Name, t.Class, t.BaseRisk, t.Trust, t.Cost)
			switch {
			case len(t.DestinationArgs) > 0:
				line += fmt.Sprintf(" destinations %s via %s", list(t.Destinations), list(t.DestinationArgs))
			case t.Class == config.ClassExternalSend:
				line += " destinations not checked"
			}
			if len(t.MCPTools) > 0 {
				line += " mcp_tools " + list(t.MCPTools)
			}
			if t.Grant != nil {
				line += " grant " + grantString(t.Grant)
			}
			f("%s\n", strings.TrimRight(line, " "))
		}
	}
	if r.Since != "" {
		f("\nchanges since %s", r.Since)
		if r.SincePolicy != nil {
			f(" (policy %s)", r.SincePolicy.Version)
		}
		f(":\n")
		if r.SincePolicy == nil {
			f("  (policy bundles not compared: give the previous bundle with --policies-since)\n")
		}
		if len(r.Changes) == 0 {
			f("  none\n")
		}
		for _, c := range r.Changes {
			mark := "      "
			if c.Growth {
				mark = "GROWTH"
			}
			who := strings.TrimSpace(c.Agent + " " + c.Tool)
			if who == "" {
				who = "policy"
			}
			f("  %s %s %s", mark, who, c)
			if c.Acknowledged != nil {
				f("  [acknowledged")
				if c.Acknowledged.Reason != "" {
					f(": %s", c.Acknowledged.Reason)
				}
				f("]")
			}
			f("\n")
		}
		for _, a := range r.Stale {
			f("  stale acknowledgement (covers nothing): %s %s %s %s\n", a.Agent, a.Tool, a.Change, a.Field)
		}
		f("\nauthority grew in %d places, %d acknowledged, %d not\n", r.Growths, r.Growths-r.Unacknowledged, r.Unacknowledged)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func budgets(a Agent) string {
	b := a.Budgets
	parts := []string{
		"max_tool_calls " + limit(float64(b.MaxToolCalls), num),
		"max_write_operations " + limit(float64(b.MaxWriteOperations), num),
		"max_execution_time " + limit(float64(b.MaxExecutionTime), dur),
		"max_cost " + limit(b.MaxCost, num),
	}
	return strings.Join(parts, ", ")
}

func agentBudgets(a Agent) string {
	ab := a.AgentBudgets
	if ab.MaxToolCalls == 0 && ab.MaxCost == 0 {
		return "none"
	}
	return fmt.Sprintf("per %s: max_tool_calls %s, max_cost %s", dur(float64(ab.Window)), limit(float64(ab.MaxToolCalls), num), limit(ab.MaxCost, num))
}

// Input is what an audit reads: the new release's routes file and bundle and,
// optionally, the earlier release's.
type Input struct {
	Routes      *config.File
	RoutesName  string
	Policy      *Bundle
	Since       *config.File // nil: no comparison
	SinceName   string
	SincePolicy *Bundle // nil: the bundles are not compared
	Acks        []Ack
}

// Audit lists what each agent may do under in.Routes and, with in.Since,
// every change since, growths marked acknowledged where in.Acks cover them.
func Audit(in Input) (*Report, error) {
	r := &Report{Routes: in.RoutesName, Policy: in.Policy, Agents: Of(in.Routes)}
	if in.Since == nil {
		return r, nil
	}
	r.Since, r.SincePolicy = in.SinceName, in.SincePolicy
	r.Changes = Diff(in.Since, in.Routes)
	if in.SincePolicy != nil && in.Policy != nil {
		pc, err := DiffPolicy(*in.SincePolicy, *in.Policy)
		if err != nil {
			return nil, err
		}
		r.Changes = append(r.Changes, pc...)
	}
	r.Acknowledge(in.Acks)
	return r, nil
}
