package extauthz

import (
	"context"
	"slices"
	"strings"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// SourceAgentOutput is the provenance source type of context that is another
// agent's output: its source_name is "<agent id>@<run id>", the run that
// produced it.
const SourceAgentOutput = "agent_output"

// maxLinks bounds the runs one call can link to (each costs a store read).
const maxLinks = 4

// Link is a verified link from the call's run to the run whose output its
// context carries: cross-agent chains are one cumulative execution graph
// (AISecOps v1.0, section 22.2), so the source run's risk counts in this one.
type Link struct {
	Run  riskstore.RunRef
	Risk float64
}

// String is the link's "<agent>@<run>" form, as provenance labels name runs.
func (l Link) String() string { return l.Run.Agent + "@" + l.Run.ID }

// linkRuns: the runs the call's context came from, verified. A label links
// only when the source agent may hand work to this one (its receives_from)
// and the source run exists in the store; anything else stays an ordinary
// provenance label (its trust level still counts).
func linkRuns(ctx context.Context, rs RunStore, who *Principal, labels []plan.Provenance) ([]Link, error) {
	var links []Link
	for _, l := range labels {
		if l.SourceType != SourceAgentOutput || len(links) == maxLinks {
			continue
		}
		agent, run, ok := strings.Cut(l.SourceName, "@")
		ref := riskstore.RunRef{Agent: agent, ID: run}
		if !ok || run == "" || ref == who.Run || !slices.Contains(who.Agent.ReceivesFrom, agent) ||
			slices.ContainsFunc(links, func(x Link) bool { return x.Run == ref }) {
			continue
		}
		st, err := rs.Load(ctx, ref, "")
		if err != nil {
			return nil, err
		}
		if st.Version > 0 {
			links = append(links, Link{Run: ref, Risk: st.RiskTotal})
		}
	}
	return links, nil
}

// linkedRisk is the risk the call's linked runs bring.
func linkedRisk(links []Link) float64 {
	var r float64
	for _, l := range links {
		r += l.Risk
	}
	return r
}
