package translate

import (
	"testing"

	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzDecodeAgents: the agents resource arrives from the network; decoding any
// layer must return agents or an error, never panic, and what it accepts must
// round-trip.
func FuzzDecodeAgents(f *testing.F) {
	rt, err := AgentsResource(example(f).Agents)
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := rt.GetLayer().MarshalJSON()
	f.Add(seed)
	f.Add([]byte(`{"schema":"aisecops.agents/v1","agents":[]}`))
	f.Add([]byte(`{"schema":"aisecops.agents/v1","agents":[{"id":"a","budgets":{"max_tool_calls":-1}}]}`))
	f.Add([]byte(`{"schema":"aisecops.agents/v1","agents":[{"id":"a","budgets":{"max_execution_time":"1e400h"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &structpb.Struct{}
		if err := s.UnmarshalJSON(data); err != nil {
			return
		}
		agents, err := DecodeAgents(&envoy_service_runtime_v3.Runtime{Name: AgentsResourceName, Layer: s})
		if err != nil {
			return
		}
		rt, err := AgentsResource(agents)
		if err != nil {
			t.Fatalf("accepted agents do not encode: %v", err)
		}
		if _, err := DecodeAgents(rt); err != nil {
			t.Fatalf("accepted agents do not round-trip: %v", err)
		}
	})
}
