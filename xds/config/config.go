// Package config owns the one declarative file the product is run from: the
// egress listener, the authz service settings, the tools agents may reach and the
// agents' budgets and thresholds. It decodes strictly, validates everything at
// once, and knows nothing of Envoy protos or of the authz server.
package config

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

//go:embed example.yaml
var exampleYAML []byte

// Example returns the bundled example file's bytes.
func Example() []byte { return bytes.Clone(exampleYAML) }

// Tool classes.
const (
	ClassRead         = "read"
	ClassWrite        = "write"
	ClassExternalSend = "external_send"
	ClassExec         = "exec"
	ClassLLM          = "llm"
)

// Trust levels of a tool's destination.
const (
	TrustInternal  = "internal"
	TrustNeutral   = "neutral"
	TrustUntrusted = "untrusted"
)

// Classes and Trusts list the accepted values.
var (
	Classes = []string{ClassRead, ClassWrite, ClassExternalSend, ClassExec, ClassLLM}
	Trusts  = []string{TrustInternal, TrustNeutral, TrustUntrusted}
)

// File is the routes file.
type File struct {
	Listener Listener `json:"listener"`
	Authz    Authz    `json:"authz"`
	Tools    []Tool   `json:"tools"`
	Agents   []Agent  `json:"agents"`
}

// Listener is Envoy's egress listener.
type Listener struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
}

// Authz is how Envoy reaches the authz service.
type Authz struct {
	Address         string   `json:"address"` // host:port
	Timeout         Duration `json:"timeout"`
	MaxRequestBytes uint32   `json:"max_request_bytes"`
	// TLS, when set, makes Envoy call the authz service over mTLS. Without it
	// the call is plaintext, which the authz service accepts only on loopback.
	TLS *AuthzTLS `json:"tls,omitempty"`
}

// AuthzTLS is Envoy's side of the mTLS connection to the authz service: files
// on Envoy's host (or mounted Kubernetes Secrets), read by Envoy.
type AuthzTLS struct {
	// CAFile is the CA bundle that signed the authz service's certificate.
	CAFile string `json:"ca_file"`
	// CertFile and KeyFile are Envoy's client certificate and key; the authz
	// service refuses TLS clients without one.
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	// SNI is the name sent and verified against the server certificate's DNS
	// SANs; default the host of Address (for an IP address, no SNI is sent and
	// the certificate must carry that IP as a SAN).
	SNI string `json:"sni,omitempty"`
}

// Tool is one destination agents may call through the egress listener.
type Tool struct {
	Name     string   `json:"name"`
	Class    string   `json:"class"`
	BaseRisk float64  `json:"base_risk"`
	Trust    string   `json:"trust"`
	Cost     float64  `json:"cost"`
	Match    Match    `json:"match"`
	Upstream Upstream `json:"upstream"`
	// MCPTools, for an MCP server route, lists the MCP tool names callable on it.
	MCPTools []string `json:"mcp_tools,omitempty"`
	// Destinations is the allowlist of destination domains for DestinationArgs.
	Destinations []string `json:"destinations,omitempty"`
	// DestinationArgs names the arguments that carry a destination (recipient, URL, channel).
	DestinationArgs []string `json:"destination_args,omitempty"`
	// TrustFirstUserMessage, on an llm route, declares the first user message
	// of a model call trusted (the end user's own words). Every other message
	// but the system prompt is untrusted context for the context firewall.
	TrustFirstUserMessage bool `json:"trust_first_user_message,omitempty"`
}

// Match selects a tool's requests on the egress listener.
type Match struct {
	Host       string `json:"host"`
	PathPrefix string `json:"path_prefix"`
}

// Upstream is where Envoy sends a tool's allowed requests.
type Upstream struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	TLS     bool   `json:"tls"`
	SNI     string `json:"sni,omitempty"` // defaults to Address
}

// Agent is one agent identity (the token's subject) with its budgets.
type Agent struct {
	ID           string     `json:"id"`
	AllowedTools []string   `json:"allowed_tools"`
	Budgets      Budgets    `json:"budgets"`
	Thresholds   Thresholds `json:"thresholds"`
	// AgentBudgets bound the agent across all its runs, per window, so that
	// fresh run ids do not multiply its allowance. Zero means unlimited.
	AgentBudgets AgentBudgets `json:"agent_budgets,omitzero"`
	// Grants bound, per tool, what a capability token for this agent may
	// carry and what a call may ask for whatever its token says: the resource
	// scopes, the rows and the cost. A tool without a grant is not narrowed.
	Grants map[string]Grant `json:"grants,omitempty"`
	// Workloads are the workload identities allowed to act as this agent at
	// the token service: exact credential subjects, such as a Kubernetes
	// service account "system:serviceaccount:<namespace>:<name>" or a SPIFFE
	// ID. A Kubernetes service-account credential names an agent only through
	// this list; other credentials name the agent whose id is their subject,
	// unless that agent lists workloads.
	Workloads []string `json:"workloads,omitempty"`
	// ReceivesFrom are the agents that may hand work to this one: a call whose
	// context came from a run of one of them (a provenance label
	// {source_type: agent_output, source_name: "<agent>@<run id>"}) links the
	// two runs, and this run's chain risk includes the source run's
	// (AISecOps v1.0, section 22.2: cross-agent chains are one cumulative
	// execution graph).
	ReceivesFrom []string `json:"receives_from,omitempty"`
}

// Budgets bound one run. Zero means unlimited.
type Budgets struct {
	MaxToolCalls       int64    `json:"max_tool_calls"`
	MaxWriteOperations int64    `json:"max_write_operations"`
	MaxExecutionTime   Duration `json:"max_execution_time"`
	MaxCost            float64  `json:"max_cost"`
}

// AgentBudgets bound an agent across its runs, per fixed window aligned to the
// Unix epoch (a window of 1h runs from one full hour to the next).
type AgentBudgets struct {
	Window       Duration `json:"window"`
	MaxToolCalls int64    `json:"max_tool_calls"`
	MaxCost      float64  `json:"max_cost"`
}

// Grant is what an agent may be given for one tool.
type Grant struct {
	// Scopes are the dot-separated resource paths the agent may act on
	// ("project.alpha"): a resource a call names must be one of them or under
	// one ("project.alpha.orders"). Empty: any resource.
	Scopes []string `json:"scopes,omitempty"`
	// MaxRows bounds the rows a call may ask for (its max_rows, limit, rows,
	// row_limit or top_k), and a token's max_rows. Zero: not bounded.
	MaxRows int64 `json:"max_rows,omitempty"`
	// MaxCost bounds a token's max_cost. Zero: not bounded.
	MaxCost float64 `json:"max_cost,omitempty"`
}

// Thresholds on a run's cumulative risk, including the step being decided.
type Thresholds struct {
	Approval float64 `json:"approval"`
	Halt     float64 `json:"halt"`
}

// Default thresholds: the values the AISecOps specification recommends to start
// from (v1.0, section 8), escalation to a human at 1.5 and halt at 2.0.
const (
	DefaultApproval = 1.5
	DefaultHalt     = 2.0
)

// Duration is a time.Duration written as "15m" in the file.
type Duration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"15m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Parse decodes and validates a routes file. name is used in error messages.
func Parse(name string, data []byte) (*File, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f.applyDefaults()
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &f, nil
}

// ParseDirectory decodes and validates the directory part of a routes file: a
// JSON object holding only its "tools" and "agents", as the control plane sends
// them to authz replicas. It is Parse for that part (unknown fields are errors,
// the same defaults, every problem reported at once), so a replica fed over xDS
// decides with exactly what a replica reading the file would. Listener and Authz
// are left zero: they are Envoy's side and do not travel.
func ParseDirectory(name string, js []byte) (*File, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var d struct {
		Tools  []Tool  `json:"tools"`
		Agents []Agent `json:"agents"`
	}
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f := &File{Tools: d.Tools, Agents: d.Agents}
	f.applyDirectoryDefaults()
	if err := errors.Join(f.validateDirectory()...); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return f, nil
}

// Load reads and parses a routes file; path "" loads the bundled example.
func Load(path string) (*File, error) {
	if path == "" {
		return Parse("example.yaml (bundled)", exampleYAML)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

func (f *File) applyDefaults() {
	if f.Authz.Timeout == 0 {
		f.Authz.Timeout = Duration(250 * time.Millisecond)
	}
	if f.Authz.MaxRequestBytes == 0 {
		f.Authz.MaxRequestBytes = 1 << 20
	}
	f.applyDirectoryDefaults()
}

func (f *File) applyDirectoryDefaults() {
	for i := range f.Agents {
		t := &f.Agents[i].Thresholds
		if t.Approval == 0 {
			t.Approval = DefaultApproval
		}
		if t.Halt == 0 {
			t.Halt = DefaultHalt
		}
	}
	for i := range f.Tools {
		u := &f.Tools[i].Upstream
		if u.TLS && u.SNI == "" {
			u.SNI = u.Address
		}
	}
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$`)
	scopeRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Validate reports every problem in f at once, each naming its field.
func (f *File) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if f.Listener.Port == 0 || f.Listener.Port > 65535 {
		bad("listener.port", "must be 1..65535")
	}
	if f.Authz.Address == "" {
		bad("authz.address", "is required")
	}
	if t := f.Authz.TLS; t != nil {
		for _, fl := range []struct{ name, path string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
			switch {
			case fl.path == "":
				bad("authz.tls."+fl.name, "is required")
			case !strings.HasPrefix(fl.path, "/"):
				bad("authz.tls."+fl.name, "must be an absolute path (Envoy resolves relative ones against its working directory)")
			}
		}
	}
	return errors.Join(append(errs, f.validateDirectory()...)...)
}

// validateDirectory reports every problem in the tools and agents.
func (f *File) validateDirectory() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	tools := map[string]bool{}
	for i, t := range f.Tools {
		p := fmt.Sprintf("tools[%d]", i)
		if !nameRE.MatchString(t.Name) {
			bad(p+".name", "%q is not a valid tool name", t.Name)
		} else if tools[t.Name] {
			bad(p+".name", "%q is declared twice", t.Name)
		}
		tools[t.Name] = true
		if !slices.Contains(Classes, t.Class) {
			bad(p+".class", "%q is not one of %s", t.Class, strings.Join(Classes, ", "))
		}
		if !slices.Contains(Trusts, t.Trust) {
			bad(p+".trust", "%q is not one of %s", t.Trust, strings.Join(Trusts, ", "))
		}
		if !(t.BaseRisk >= 0 && t.BaseRisk <= 10) || math.IsNaN(t.BaseRisk) {
			bad(p+".base_risk", "must be between 0 and 10")
		}
		if !(t.Cost >= 0 && t.Cost <= 1e6) {
			bad(p+".cost", "must be between 0 and 1e6")
		}
		if t.Match.Host == "" {
			bad(p+".match.host", "is required")
		}
		if !strings.HasPrefix(t.Match.PathPrefix, "/") {
			bad(p+".match.path_prefix", "must start with /")
		}
		if t.Upstream.Address == "" {
			bad(p+".upstream.address", "is required")
		}
		if t.Upstream.Port == 0 || t.Upstream.Port > 65535 {
			bad(p+".upstream.port", "must be 1..65535")
		}
		for j, a := range t.DestinationArgs {
			if a == "" {
				bad(fmt.Sprintf("%s.destination_args[%d]", p, j), "is empty")
			}
		}
		if len(t.DestinationArgs) > 0 && len(t.Destinations) == 0 {
			bad(p+".destinations", "is required when destination_args is set")
		}
	}
	agents := map[string]bool{}
	workloads := map[string]string{}
	for i, a := range f.Agents {
		p := fmt.Sprintf("agents[%d]", i)
		if !nameRE.MatchString(a.ID) {
			bad(p+".id", "%q is not a valid agent id", a.ID)
		} else if agents[a.ID] {
			bad(p+".id", "%q is declared twice", a.ID)
		}
		agents[a.ID] = true
		for j, t := range a.AllowedTools {
			if !tools[t] {
				bad(fmt.Sprintf("%s.allowed_tools[%d]", p, j), "names unknown tool %q", t)
			}
		}
		b := a.Budgets
		if b.MaxToolCalls < 0 || b.MaxWriteOperations < 0 || b.MaxExecutionTime < 0 || b.MaxCost < 0 {
			bad(p+".budgets", "must not be negative")
		}
		th := a.Thresholds
		if th.Approval <= 0 || th.Halt <= 0 {
			bad(p+".thresholds", "must be positive")
		}
		ab := a.AgentBudgets
		switch {
		case ab.MaxToolCalls < 0 || ab.MaxCost < 0 || ab.Window < 0:
			bad(p+".agent_budgets", "must not be negative")
		case (ab.MaxToolCalls > 0 || ab.MaxCost > 0) && time.Duration(ab.Window) < time.Second:
			bad(p+".agent_budgets.window", "is required (at least 1s) when an agent budget is set")
		}
		for _, tool := range sortedKeys(a.Grants) {
			g := a.Grants[tool]
			gp := fmt.Sprintf("%s.grants[%s]", p, tool)
			if !slices.Contains(a.AllowedTools, tool) {
				bad(gp, "grants a tool the agent is not allowed")
			}
			if g.MaxRows < 0 || g.MaxCost < 0 {
				bad(gp, "must not be negative")
			}
			for j, sc := range g.Scopes {
				if !scopeRE.MatchString(sc) {
					bad(fmt.Sprintf("%s.scopes[%d]", gp, j), "%q is not a dot-separated resource path", sc)
				}
			}
		}
		for j, w := range a.Workloads {
			if w == "" || len(w) > 256 || strings.ContainsAny(w, " \t\r\n") {
				bad(fmt.Sprintf("%s.workloads[%d]", p, j), "is not a workload subject")
			}
			if other, dup := workloads[w]; dup {
				bad(fmt.Sprintf("%s.workloads[%d]", p, j), "is already a workload of agent %q", other)
			}
			workloads[w] = a.ID
		}
	}
	for i, a := range f.Agents {
		for j, from := range a.ReceivesFrom {
			if !agents[from] || from == a.ID {
				bad(fmt.Sprintf("agents[%d].receives_from[%d]", i, j), "%q is not another configured agent", from)
			}
		}
	}
	return errs
}

// Tool returns the named tool.
func (f *File) Tool(name string) (Tool, bool) {
	for _, t := range f.Tools {
		if t.Name == name {
			return t, true
		}
	}
	return Tool{}, false
}

// Agent returns the agent with id.
func (f *File) Agent(id string) (Agent, bool) {
	for _, a := range f.Agents {
		if a.ID == id {
			return a, true
		}
	}
	return Agent{}, false
}

// Micros converts money to integer micro-units, the unit budgets are kept in.
func Micros(v float64) int64 { return int64(math.Round(v * 1e6)) }
