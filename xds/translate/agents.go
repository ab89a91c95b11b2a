package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// The agents section travels to authz replicas as an RTDS resource
// (type.googleapis.com/envoy.service.runtime.v3.Runtime) named AgentsResourceName,
// whose layer is a google.protobuf.Struct {"schema": AgentsSchema, "agents": [...]}
// with the routes file's own field names. RTDS is a standard xDS type, so the
// go-control-plane snapshot cache serves it on the same ADS stream with no custom
// type, and an Envoy never receives it because no Envoy bootstrap subscribes to it.
const (
	AgentsResourceName = "aisecops-agents"
	AgentsSchema       = "aisecops.agents/v1"
	RuntimeTypeURL     = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
)

// AgentsResource encodes agents as the RTDS resource authz replicas subscribe to.
func AgentsResource(agents []config.Agent) (*envoy_service_runtime_v3.Runtime, error) {
	if agents == nil {
		agents = []config.Agent{}
	}
	b, err := json.Marshal(map[string]any{"schema": AgentsSchema, "agents": agents})
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	return &envoy_service_runtime_v3.Runtime{Name: AgentsResourceName, Layer: s}, nil
}

// DecodeAgents reads the agents back from the resource and validates them the
// way the routes file is validated (strict fields, defaults, every problem at
// once), so a replica applies exactly what a file-only replica would.
func DecodeAgents(rt *envoy_service_runtime_v3.Runtime) ([]config.Agent, error) {
	if rt == nil || rt.GetLayer() == nil {
		return nil, errors.New("agents: empty resource")
	}
	if rt.GetName() != AgentsResourceName {
		return nil, fmt.Errorf("agents: unexpected resource %q", rt.GetName())
	}
	b, err := rt.GetLayer().MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	var doc struct {
		Schema string          `json:"schema"`
		Agents json.RawMessage `json:"agents"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	if doc.Schema != AgentsSchema {
		return nil, fmt.Errorf("agents: schema %q, want %q", doc.Schema, AgentsSchema)
	}
	dec := json.NewDecoder(bytes.NewReader(doc.Agents))
	dec.DisallowUnknownFields()
	var agents []config.Agent
	if err := dec.Decode(&agents); err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	// Reuse the file validator: a file with these agents, every tool they name and
	// a placeholder listener/authz, is valid exactly when the agents are.
	f := &config.File{Listener: config.Listener{Port: 1}, Authz: config.Authz{Address: "x:1", Timeout: config.Duration(time.Second)}, Agents: agents}
	names := map[string]bool{}
	for _, a := range agents {
		for _, t := range a.AllowedTools {
			if !names[t] {
				names[t] = true
				f.Tools = append(f.Tools, config.Tool{Name: t, Class: config.ClassRead, Trust: config.TrustNeutral,
					Match: config.Match{Host: "x", PathPrefix: "/" + t}, Upstream: config.Upstream{Address: "x", Port: 1}})
			}
		}
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	return agents, nil
}
