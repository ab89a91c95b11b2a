package translate

import (
	"testing"

	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzDecodeDirectory: the directory resource arrives from the network;
// decoding any layer must return a directory or an error, never panic, and what
// it accepts must round-trip.
func FuzzDecodeDirectory(f *testing.F) {
	rt, err := DirectoryResource(example(f))
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := rt.GetLayer().MarshalJSON()
	f.Add(seed)
	f.Add([]byte(`{"schema":"aisecops.directory/v1","tools":[],"agents":[]}`))
	f.Add([]byte(`{"schema":"aisecops.directory/v1","agents":[{"id":"a","budgets":{"max_tool_calls":-1}}]}`))
	f.Add([]byte(`{"schema":"aisecops.directory/v1","agents":[{"id":"a","budgets":{"max_execution_time":"1e400h"}}]}`))
	f.Add([]byte(`{"schema":"aisecops.directory/v1","tools":[{"name":"t","class":"read","trust":"neutral","base_risk":1e308,` +
		`"match":{"host":"h","path_prefix":"/"},"upstream":{"address":"a","port":1},"destination_args":["to"]}]}`))
	f.Add([]byte(`{"schema":"aisecops.directory/v1","listener":{"port":1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &structpb.Struct{}
		if err := s.UnmarshalJSON(data); err != nil {
			return
		}
		dir, err := DecodeDirectory(&envoy_service_runtime_v3.Runtime{Name: DirectoryResourceName, Layer: s})
		if err != nil {
			return
		}
		rt, err := DirectoryResource(dir)
		if err != nil {
			t.Fatalf("accepted directory does not encode: %v", err)
		}
		if _, err := DecodeDirectory(rt); err != nil {
			t.Fatalf("accepted directory does not round-trip: %v", err)
		}
	})
}
