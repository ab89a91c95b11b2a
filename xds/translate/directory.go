package translate

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// The directory the authz side decides with — the routes file's tools and
// agents — travels to authz replicas as ONE RTDS resource
// (type.googleapis.com/envoy.service.runtime.v3.Runtime) named
// DirectoryResourceName, whose layer is a google.protobuf.Struct
// {"schema": DirectorySchema, "tools": [...], "agents": [...]} holding the
// routes file's own types under their own JSON names, so a field added to
// config.Tool or config.Agent travels without a change here. One resource means
// one version: a replica never holds tools from one file and agents from
// another. RTDS is a standard xDS type, so the go-control-plane snapshot cache
// serves it on the same ADS stream with no custom type, and an Envoy never
// receives it because no Envoy bootstrap subscribes to it.
//
// The resource was named aisecops-agents (schema aisecops.agents/v1) while it
// carried only the agents; the name changed with the content so that a replica
// built before the change waits (keeping its last good agents) instead of
// NACKing a schema it does not know.
const (
	DirectoryResourceName = "aisecops-directory"
	DirectorySchema       = "aisecops.directory/v1"
	RuntimeTypeURL        = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
)

// DirectoryResource encodes f's tools and agents as the RTDS resource authz
// replicas subscribe to. f's listener and authz sections are Envoy's and are
// not sent.
func DirectoryResource(f *config.File) (*envoy_service_runtime_v3.Runtime, error) {
	if f == nil {
		return nil, errors.New("directory: nil file")
	}
	doc := struct {
		Schema string         `json:"schema"`
		Tools  []config.Tool  `json:"tools"`
		Agents []config.Agent `json:"agents"`
	}{DirectorySchema, f.Tools, f.Agents}
	if doc.Tools == nil {
		doc.Tools = []config.Tool{}
	}
	if doc.Agents == nil {
		doc.Agents = []config.Agent{}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	s := &structpb.Struct{}
	if err := s.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	return &envoy_service_runtime_v3.Runtime{Name: DirectoryResourceName, Layer: s}, nil
}

// DecodeDirectory reads the tools and agents back from the resource and
// validates them with config.ParseDirectory, exactly as the routes file is
// validated (strict fields, defaults, every problem at once), so a replica
// applies exactly what a file-only replica would. The File it returns has only
// Tools and Agents set.
func DecodeDirectory(rt *envoy_service_runtime_v3.Runtime) (*config.File, error) {
	if rt == nil || rt.GetLayer() == nil {
		return nil, errors.New("directory: empty resource")
	}
	if rt.GetName() != DirectoryResourceName {
		return nil, fmt.Errorf("directory: unexpected resource %q", rt.GetName())
	}
	fields := maps.Clone(rt.GetLayer().GetFields())
	if s := fields["schema"].GetStringValue(); s != DirectorySchema {
		return nil, fmt.Errorf("directory: schema %q, want %q", s, DirectorySchema)
	}
	delete(fields, "schema")
	b, err := (&structpb.Struct{Fields: fields}).MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	f, err := config.ParseDirectory("directory resource "+DirectoryResourceName, b)
	if err != nil {
		return nil, err
	}
	return f, nil
}
