package validate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istiosecurityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	"sigs.k8s.io/yaml"
)

// scheme knows every kind the deployment files may contain. A kind missing
// here fails decoding: no object is accepted unchecked.
func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, autoscalingv2.AddToScheme, policyv1.AddToScheme,
		networkingv1.AddToScheme, rbacv1.AddToScheme, monitoringv1.AddToScheme,
		istiosecurityv1.AddToScheme, egv1a1.AddToScheme, gatewayv1.Install, gatewayv1beta1.Install,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

var strictYAML = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme(), scheme(),
	json.SerializerOptions{Yaml: true, Strict: true})

// decodeStrict decodes one YAML document into its registered Go type. Unknown
// and duplicate fields are errors, and so is a kind no scheme knows.
func decodeStrict(doc []byte) (runtime.Object, error) {
	obj, _, err := strictYAML.Decode(doc, nil, nil)
	if err != nil {
		return nil, err
	}
	// Istio's generated JSON unmarshalers allow unknown fields (jsonpb with
	// AllowUnknownFields), so strict decoding above does not reach into an
	// Istio spec: decode that again with protojson, which does.
	if ap, ok := obj.(*istiosecurityv1.AuthorizationPolicy); ok {
		if err := strictProtoField(doc, "spec", &ap.Spec); err != nil {
			return nil, fmt.Errorf("AuthorizationPolicy %s spec: %w", ap.Name, err)
		}
	}
	return obj, nil
}

// strictProtoField decodes the field key of a YAML document into m with
// protojson, unknown fields being errors.
func strictProtoField(doc []byte, key string, m proto.Message) error {
	var top map[string]any
	if err := yaml.Unmarshal(doc, &top); err != nil {
		return err
	}
	return strictProto(top[key], m)
}

// strictProto decodes v (from YAML) into m, unknown fields being errors.
func strictProto(v any, m proto.Message) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return err
	}
	return protojson.UnmarshalOptions{DiscardUnknown: false}.Unmarshal(j, m)
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs returns the non-empty documents of a multi-document YAML stream.
func splitDocs(data []byte) [][]byte {
	var out [][]byte
	for _, part := range docSep.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(part)) != "" {
			out = append(out, []byte(part))
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// decodeFile strictly decodes every document of a YAML file.
func decodeFile(t *testing.T, path string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	var errs []error
	for i, d := range splitDocs(data) {
		obj, err := decodeStrict(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s document %d: %w", path, i, err))
			continue
		}
		objs = append(objs, obj)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return objs
}

func globYAML(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no YAML in %s: %v", dir, err)
	}
	return files
}

// TestStrictDecodingCatchesMistakes keeps decodeStrict honest: each broken
// document must be refused.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"unknown field": `apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: [{port: 80}], selectr: {a: b}}`,
		"duplicate field": `apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {a: "1", a: "2"}`,
		"unknown kind": `apiVersion: example.com/v1
kind: Widget
metadata: {name: w}`,
		"wrong type": `apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec: {replicas: "two"}`,
		"unknown field in an Istio spec": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p}
spec: {action: CUSTOM, provider: {name: x}, rulez: []}`,
		"unknown field in an Envoy Gateway spec": `apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: p}
spec: {extAuth: {grpc: {backendRefs: [{name: a, port: 1}]}, failClosed: true}}`,
	}
	for name, doc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := decodeStrict([]byte(doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := decodeStrict([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: \"1\"}\n")); err != nil {
		t.Fatalf("good ConfigMap refused: %v", err)
	}
	if n := len(splitDocs(bytes.Repeat([]byte("---\n# only a comment\n"), 3))); n != 0 {
		t.Errorf("comment-only documents: %d, want 0", n)
	}
}
