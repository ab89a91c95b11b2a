package validate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	apiextensions "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// The CRDs the projects ship in the very modules whose Go types decode the
// manifests: what a cluster with those projects installed would validate
// against (OpenAPI schema and x-kubernetes-validations CEL rules).
var crdFiles = []string{
	"sigs.k8s.io/gateway-api@v1.6.3/config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
	"sigs.k8s.io/gateway-api@v1.6.3/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
	"sigs.k8s.io/gateway-api@v1.6.3/config/crd/standard/gateway.networking.k8s.io_backendtlspolicies.yaml",
	"github.com/envoyproxy/gateway@v1.9.1/charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_securitypolicies.yaml",
	"github.com/envoyproxy/gateway@v1.9.1/charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_backends.yaml",
	"istio.io/api@v1.32.0/kubernetes/customresourcedefinitions.gen.yaml",
}

// crdValidator validates one kind at one version as the API server would.
type crdValidator struct {
	schema     validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

// crdValidators loads crdFiles from the module cache (go test has downloaded
// those modules to build this package).
func crdValidators(t *testing.T) map[schema.GroupVersionKind]crdValidator {
	t.Helper()
	modCache := os.Getenv("GOMODCACHE")
	if modCache == "" {
		out, err := goEnv("GOMODCACHE")
		if err != nil {
			t.Fatal(err)
		}
		modCache = out
	}
	vs := map[schema.GroupVersionKind]crdValidator{}
	for _, f := range crdFiles {
		data, err := os.ReadFile(filepath.Join(modCache, filepath.FromSlash(f)))
		if err != nil {
			t.Fatalf("CRD file: %v", err)
		}
		for _, doc := range splitDocs(data) {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := yaml.Unmarshal(doc, &crd); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
					continue
				}
				var internal apiextensions.JSONSchemaProps
				if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
					t.Fatalf("%s %s: %v", crd.Name, v.Name, err)
				}
				sv, _, err := validation.NewSchemaValidator(&internal)
				if err != nil {
					t.Fatalf("%s %s: %v", crd.Name, v.Name, err)
				}
				st, err := structuralschema.NewStructural(&internal)
				if err != nil {
					t.Fatalf("%s %s: %v", crd.Name, v.Name, err)
				}
				gvk := schema.GroupVersionKind{Group: crd.Spec.Group, Version: v.Name, Kind: crd.Spec.Names.Kind}
				vs[gvk] = crdValidator{schema: sv, structural: st, cel: cel.NewValidator(st, true, celconfig.PerCallLimit)}
			}
		}
	}
	return vs
}

// validateCR checks one manifest against its CRD as the API server does:
// integers kept as integers, the schema's defaults applied, then the schema
// (types, enums, required fields, patterns, bounds) and the CEL rules.
func validateCR(vs map[schema.GroupVersionKind]crdValidator, doc []byte) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := utiljson.Unmarshal(j, &obj); err != nil {
		return err
	}
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return err
	}
	v, ok := vs[gv.WithKind(kind)]
	if !ok {
		return fmt.Errorf("%s %s: no CRD loaded for it", apiVersion, kind)
	}
	structuraldefaulting.Default(obj, v.structural)
	errs := validation.ValidateCustomResource(nil, obj, v.schema)
	if v.cel != nil {
		celErrs, _ := v.cel.Validate(context.Background(), field.NewPath(""), v.structural, obj, nil, celconfig.RuntimeCELCostBudget)
		errs = append(errs, celErrs...)
	}
	return errs.ToAggregate()
}

// TestMeshManifestsAgainstCRDs validates every Istio, Envoy Gateway and
// Gateway API manifest against the CRD its project ships.
func TestMeshManifestsAgainstCRDs(t *testing.T) {
	t.Parallel()
	vs := crdValidators(t)
	var errs []error
	n := 0
	for _, dir := range []string{"../istio", "../envoy-gateway"} {
		for _, f := range globYAML(t, dir) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for i, doc := range splitDocs(data) {
				var top map[string]any
				if err := yaml.Unmarshal(doc, &top); err != nil || top["kind"] == nil {
					continue // istiod-values.yaml: Helm values, checked as MeshConfig
				}
				n++
				if err := validateCR(vs, doc); err != nil {
					errs = append(errs, fmt.Errorf("%s document %d: %w", f, i, err))
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n < 6 {
		t.Errorf("validated %d manifests, want every one", n)
	}
}

// TestCRDValidationCatchesMistakes: values the Go types accept but the
// cluster would refuse are refused here too.
func TestCRDValidationCatchesMistakes(t *testing.T) {
	t.Parallel()
	vs := crdValidators(t)
	bad := map[string]string{
		"enum (Istio action)": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: istio-system}
spec: {action: MAYBE}`,
		"CEL rule (extAuth needs grpc or http)": `apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: p, namespace: aisecops}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]
  extAuth: {failOpen: false}`,
		"required field (Gateway listeners)": `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g, namespace: aisecops}
spec: {gatewayClassName: eg}`,
		"pattern (hostname)": `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: aisecops}
spec: {hostnames: ["not a host!"]}`,
	}
	for name, doc := range bad {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if err := validateCR(vs, []byte(doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func goEnv(name string) (string, error) {
	out, err := exec.Command("go", "env", name).Output()
	return strings.TrimSpace(string(out)), err
}
