package extauthz

import (
	"sync/atomic"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Directory is the agents and tools configuration the server decides with. It
// is swapped whole when the routes file changes or the control plane pushes new
// budgets, so a Check never sees half an update.
type Directory struct {
	p atomic.Pointer[directory]
}

type directory struct {
	agents  map[string]config.Agent
	tools   map[string]config.Tool
	version string
}

// NewDirectory returns a Directory holding f's agents and tools.
func NewDirectory(f *config.File, version string) *Directory {
	d := &Directory{}
	d.Set(f, version)
	return d
}

// Set replaces the whole configuration.
func (d *Directory) Set(f *config.File, version string) {
	nd := &directory{agents: map[string]config.Agent{}, tools: map[string]config.Tool{}, version: version}
	if f != nil {
		for _, a := range f.Agents {
			nd.agents[a.ID] = a
		}
		for _, t := range f.Tools {
			nd.tools[t.Name] = t
		}
	}
	d.p.Store(nd)
}

// SetAgents replaces only the agents (budgets and thresholds pushed over xDS).
func (d *Directory) SetAgents(agents []config.Agent, version string) {
	old := d.p.Load()
	nd := &directory{agents: map[string]config.Agent{}, tools: old.tools, version: version}
	for _, a := range agents {
		nd.agents[a.ID] = a
	}
	d.p.Store(nd)
}

// Agent returns the agent with id.
func (d *Directory) Agent(id string) (config.Agent, bool) {
	a, ok := d.p.Load().agents[id]
	return a, ok
}

// Tool returns the tool named name.
func (d *Directory) Tool(name string) (config.Tool, bool) {
	t, ok := d.p.Load().tools[name]
	return t, ok
}

// Version is the configuration's version.
func (d *Directory) Version() string { return d.p.Load().version }
