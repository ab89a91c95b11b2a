package extauthz

import (
	"sync/atomic"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Directory is the agents and tools configuration the server decides with. It
// is swapped whole when the routes file changes or the control plane pushes a
// new one, and a Check takes one snapshot at its start, so it never sees half
// an update.
type Directory struct {
	p        atomic.Pointer[directory]
	onChange atomic.Pointer[func(from, to string)]
}

// OnChange sets f to be told of every configuration Set whose version
// differs from the one it replaces (for the audit log).
func (d *Directory) OnChange(f func(from, to string)) { d.onChange.Store(&f) }

// directory is one immutable snapshot of the configuration.
type directory struct {
	agents    map[string]config.Agent
	tools     map[string]config.Tool
	routes    *config.RouteTable
	versions  map[string]string // tool → route version
	workloads map[string]string // workload subject → agent id
	version   string
}

// NewDirectory returns a Directory holding f's agents and tools.
func NewDirectory(f *config.File, version string) *Directory {
	d := &Directory{}
	d.Set(f, version)
	return d
}

// Set replaces the whole configuration.
func (d *Directory) Set(f *config.File, version string) {
	nd := &directory{agents: map[string]config.Agent{}, tools: map[string]config.Tool{}, versions: map[string]string{},
		workloads: map[string]string{}, routes: config.NewRouteTable(nil), version: version}
	if f != nil {
		for _, a := range f.Agents {
			nd.agents[a.ID] = a
			for _, w := range a.Workloads {
				nd.workloads[w] = a.ID
			}
		}
		for _, t := range f.Tools {
			nd.tools[t.Name] = t
			nd.versions[t.Name] = config.RouteVersion(t)
		}
		nd.routes = config.NewRouteTable(f.Tools)
	}
	old := d.p.Swap(nd)
	if f := d.onChange.Load(); f != nil && old != nil && old.version != version {
		(*f)(old.version, version)
	}
}

func (d *Directory) current() *directory { return d.p.Load() }

// Agent returns the agent with id.
func (d *Directory) Agent(id string) (config.Agent, bool) { return d.current().agent(id) }

// WorkloadAgent returns the agent that lists subject among its workloads.
func (d *Directory) WorkloadAgent(subject string) (config.Agent, bool) {
	cur := d.current()
	id, ok := cur.workloads[subject]
	if !ok {
		return config.Agent{}, false
	}
	return cur.agent(id)
}

// Tool returns the tool named name.
func (d *Directory) Tool(name string) (config.Tool, bool) {
	t, ok := d.current().tools[name]
	return t, ok
}

// Version is the configuration's version.
func (d *Directory) Version() string { return d.current().version }

func (d *directory) agent(id string) (config.Agent, bool) {
	a, ok := d.agents[id]
	return a, ok
}

// resolver returns the route resolver of a Check. The routes file decides the
// route: the request's host and normalised path are resolved as Envoy's route
// table built from the same file resolves them, so a path that leaves its
// route ("/read/../admin") lands on another route or none. Context
// extensions, when present (an Envoy configured by our control plane), must
// name the same tool and class, else the request is denied: the file's
// attributes are the ones used either way. Without extensions (a mesh's
// ext_authz provider, or explain, whose caller's extensions are ignored) the
// file alone decides.
func (d *directory) resolver(ignoreExtensions bool) plan.Resolver {
	return func(ext map[string]string, _, host, path string) (plan.Route, error) {
		t, found := d.routes.Resolve(host, path)
		if !ignoreExtensions && len(ext) > 0 {
			claimed, err := plan.RouteFromExtensions(ext)
			if err != nil {
				return plan.Route{}, err
			}
			if !found || claimed.Tool != t.Name || claimed.ToolClass != t.Class {
				return plan.Route{}, reason.New(reason.RouteUnconfigured, "the route's context disagrees with the routes file for this host and path")
			}
		}
		if !found {
			return plan.Route{}, reason.New(reason.RouteUnconfigured, "no route of the routes file matches this host and path")
		}
		return d.route(t), nil
	}
}

// route is the plan's view of a tool's route.
func (d *directory) route(t config.Tool) plan.Route {
	return plan.Route{
		Tool: t.Name, ToolClass: t.Class, BaseRisk: t.BaseRisk, Trust: t.Trust, Cost: t.Cost,
		RouteVersion: d.versions[t.Name], MCPTools: t.MCPTools,
	}
}

// Agents returns every configured agent.
func (d *Directory) Agents() []config.Agent {
	cur := d.current()
	out := make([]config.Agent, 0, len(cur.agents))
	for _, a := range cur.agents {
		out = append(out, a)
	}
	return out
}
