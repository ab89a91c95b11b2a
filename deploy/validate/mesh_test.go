package validate

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	istiosecurityv1beta1 "istio.io/api/security/v1beta1"
	istiosecurityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// The chart's names the mesh manifests point at (release "aisecops" in
// namespace "aisecops", the default agents namespace).
const (
	authzHost      = "aisecops-authz.aisecops.svc.cluster.local"
	authzService   = "aisecops-authz"
	authzPort      = 9191
	agentNamespace = "agents"
)

// chartRoutes is the routes file the chart renders with its default values:
// the mesh manifests must agree with it on hosts and body size.
func chartRoutes(t *testing.T) *config.File {
	t.Helper()
	r := renderChart(t, readValues(t, []string{"values.yaml"}, nil))
	cm, _ := r.get("ConfigMap", fullname+"-routes").(*corev1.ConfigMap)
	if cm == nil {
		t.Fatal("no routes ConfigMap rendered")
	}
	f, err := config.Parse("ConfigMap "+cm.Name, []byte(cm.Data["routes.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestKubernetesManifestsStrict decodes deploy/kubernetes strictly into the
// k8s.io/api types.
func TestKubernetesManifestsStrict(t *testing.T) {
	t.Parallel()
	n := 0
	for _, f := range globYAML(t, "../kubernetes") {
		n += len(decodeFile(t, f))
	}
	if n < 10 {
		t.Errorf("%d objects in deploy/kubernetes, want the whole stack", n)
	}
}

// TestIstioExtensionProvider: the mesh config is a valid MeshConfig whose
// aisecops provider sends the body whole, fails closed and times out quickly.
func TestIstioExtensionProvider(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../istio/istiod-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.UnmarshalStrict(data, &values); err != nil {
		t.Fatal(err)
	}
	mc := &meshv1alpha1.MeshConfig{}
	if err := strictProto(values["meshConfig"], mc); err != nil {
		t.Fatalf("meshConfig: %v", err)
	}
	if err := checkExtensionProvider(mc, int(chartRoutes(t).Authz.MaxRequestBytes)); err != nil {
		t.Fatal(err)
	}
}

func checkExtensionProvider(mc *meshv1alpha1.MeshConfig, maxBody int) error {
	var p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider
	for _, ep := range mc.GetExtensionProviders() {
		if ep.GetName() == "aisecops" {
			p = ep.GetEnvoyExtAuthzGrpc()
		}
	}
	switch {
	case p == nil:
		return fmt.Errorf("no envoyExtAuthzGrpc provider named aisecops")
	case strings.TrimPrefix(p.GetService(), "aisecops/") != authzHost || p.GetPort() != authzPort:
		return fmt.Errorf("provider calls %s:%d, want the chart's %s:%d", p.GetService(), p.GetPort(), authzHost, authzPort)
	case p.GetFailOpen():
		return fmt.Errorf("failOpen: tool calls would pass unchecked when aisecops is down")
	case p.GetTimeout() == nil || p.GetTimeout().AsDuration() > 5*time.Second:
		return fmt.Errorf("timeout %v: set one (Istio's default is 600s)", p.GetTimeout())
	case p.GetIncludeRequestBodyInCheck() == nil:
		return fmt.Errorf("no includeRequestBodyInCheck: arguments would go unchecked")
	case p.GetIncludeRequestBodyInCheck().GetAllowPartialMessage():
		return fmt.Errorf("allowPartialMessage: a cut body hides what follows the cut")
	case int(p.GetIncludeRequestBodyInCheck().GetMaxRequestBytes()) != maxBody:
		return fmt.Errorf("maxRequestBytes %d, want the routes file's %d", p.GetIncludeRequestBodyInCheck().GetMaxRequestBytes(), maxBody)
	case !p.GetIncludeRequestBodyInCheck().GetPackAsBytes():
		return fmt.Errorf("packAsBytes false: a body that is not UTF-8 would be mangled")
	}
	return nil
}

// TestIstioAuthorizationPolicies: CUSTOM policies name the provider and cover
// the agents' namespace; the egress gateway one exists.
func TestIstioAuthorizationPolicies(t *testing.T) {
	t.Parallel()
	onGateway := false
	for _, obj := range decodeFile(t, "../istio/authorization-policy.yaml") {
		ap, ok := obj.(*istiosecurityv1.AuthorizationPolicy)
		if !ok {
			t.Errorf("%T in authorization-policy.yaml", obj)
			continue
		}
		spec := &ap.Spec
		if spec.GetAction() != istiosecurityv1beta1.AuthorizationPolicy_CUSTOM {
			t.Errorf("%s: action %v, want CUSTOM", ap.Name, spec.GetAction())
		}
		if spec.GetProvider().GetName() != "aisecops" {
			t.Errorf("%s: provider %q, want aisecops", ap.Name, spec.GetProvider().GetName())
		}
		fromAgents := false
		for _, r := range spec.GetRules() {
			for _, f := range r.GetFrom() {
				if slices.Contains(f.GetSource().GetNamespaces(), agentNamespace) {
					fromAgents = true
				}
			}
		}
		if !fromAgents {
			t.Errorf("%s: no rule matches requests from namespace %s", ap.Name, agentNamespace)
		}
		if spec.GetSelector().GetMatchLabels()["istio"] == "egressgateway" {
			onGateway = true
		}
	}
	if !onGateway {
		t.Error("no CUSTOM policy on the egress gateway, where the agents' outbound calls are received")
	}
}

// TestEnvoyGatewayManifests decodes every Envoy Gateway and Gateway API
// manifest strictly and checks the SecurityPolicy: gRPC ext_authz to the
// chart's authz Service, body forwarded, fail closed, no context extensions;
// routes only for hosts of the routes file.
func TestEnvoyGatewayManifests(t *testing.T) {
	t.Parallel()
	file := chartRoutes(t)
	routes := config.NewRouteTable(file.Tools)
	maxBody := int(file.Authz.MaxRequestBytes)
	gateways := map[string]bool{}
	var policies []*egv1a1.SecurityPolicy
	var httpRoutes []*gatewayv1.HTTPRoute
	for _, f := range globYAML(t, "../envoy-gateway") {
		for _, obj := range decodeFile(t, f) {
			switch o := obj.(type) {
			case *gatewayv1.Gateway:
				gateways[o.Name] = true
			case *egv1a1.SecurityPolicy:
				policies = append(policies, o)
			case *gatewayv1.HTTPRoute:
				httpRoutes = append(httpRoutes, o)
			case *egv1a1.Backend, *gatewayv1.BackendTLSPolicy:
			default:
				t.Errorf("%s: unexpected %T", f, obj)
			}
		}
	}
	if len(policies) == 0 {
		t.Fatal("no SecurityPolicy")
	}
	for _, p := range policies {
		if err := checkSecurityPolicy(p, gateways, maxBody); err != nil {
			t.Error(err)
		}
	}
	for _, r := range httpRoutes {
		for _, h := range r.Spec.Hostnames {
			for _, rule := range r.Spec.Rules {
				for _, m := range rule.Matches {
					path := "/"
					if m.Path != nil && m.Path.Value != nil {
						path = *m.Path.Value
					}
					if _, ok := routes.Resolve(strings.ToLower(string(h)), path); !ok {
						t.Errorf("HTTPRoute %s: %s%s is no route of the routes file: every Check would be denied route_unconfigured", r.Name, h, path)
					}
				}
			}
		}
	}
}

func checkSecurityPolicy(p *egv1a1.SecurityPolicy, gateways map[string]bool, maxBody int) error {
	ea := p.Spec.ExtAuth
	switch {
	case ea == nil || ea.GRPC == nil:
		return fmt.Errorf("SecurityPolicy %s: no gRPC extAuth", p.Name)
	case len(ea.GRPC.BackendRefs) != 1:
		return fmt.Errorf("SecurityPolicy %s: want one backendRef", p.Name)
	case ea.BodyToExtAuth == nil || int(ea.BodyToExtAuth.MaxRequestBytes) != maxBody:
		return fmt.Errorf("SecurityPolicy %s: bodyToExtAuth %v, want maxRequestBytes %d (arguments are in the body)", p.Name, ea.BodyToExtAuth, maxBody)
	case ea.FailOpen == nil || *ea.FailOpen:
		return fmt.Errorf("SecurityPolicy %s: failOpen must be set to false", p.Name)
	case len(ea.ContextExtensions) > 0:
		return fmt.Errorf("SecurityPolicy %s: context extensions would be checked against the routes file; leave them out", p.Name)
	case ea.HTTP != nil || len(ea.HeadersToExtAuth) > 0:
		return fmt.Errorf("SecurityPolicy %s: HTTP ext_authz or a header allow-list would drop what the Check needs", p.Name)
	}
	ref := ea.GRPC.BackendRefs[0]
	if ref.Kind != nil && *ref.Kind != "Service" || string(ref.Name) != authzService || ref.Namespace == nil ||
		*ref.Namespace != "aisecops" || ref.Port == nil || *ref.Port != authzPort {
		return fmt.Errorf("SecurityPolicy %s: backendRef %+v, want Service aisecops/%s:%d", p.Name, ref, authzService, authzPort)
	}
	for _, tr := range p.Spec.TargetRefs {
		if tr.Kind == "Gateway" && !gateways[string(tr.Name)] {
			return fmt.Errorf("SecurityPolicy %s: targets Gateway %s, which is not defined here", p.Name, tr.Name)
		}
	}
	if len(p.Spec.TargetRefs) == 0 {
		return fmt.Errorf("SecurityPolicy %s: targets nothing", p.Name)
	}
	return nil
}

// TestMeshChecksCatchMistakes keeps the provider and policy checks honest.
func TestMeshChecksCatchMistakes(t *testing.T) {
	t.Parallel()
	good := func() *meshv1alpha1.MeshConfig {
		mc := &meshv1alpha1.MeshConfig{}
		if err := strictProto(map[string]any{"extensionProviders": []any{map[string]any{
			"name": "aisecops", "envoyExtAuthzGrpc": map[string]any{
				"service": authzHost, "port": authzPort, "timeout": "1s",
				"includeRequestBodyInCheck": map[string]any{"maxRequestBytes": 1024, "packAsBytes": true},
			}}}}, mc); err != nil {
			t.Fatal(err)
		}
		return mc
	}
	if err := checkExtensionProvider(good(), 1024); err != nil {
		t.Fatalf("good provider refused: %v", err)
	}
	for name, mutate := range map[string]func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider){
		"fail open": func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider) {
			p.FailOpen = true
		},
		"partial body": func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider) {
			p.IncludeRequestBodyInCheck.AllowPartialMessage = true
		},
		"no body": func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider) {
			p.IncludeRequestBodyInCheck = nil
		},
		"no timeout": func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider) {
			p.Timeout = nil
		},
		"other service": func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider) {
			p.Service = "opa.opa.svc.cluster.local"
		},
		"smaller body": func(p *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider) {
			p.IncludeRequestBodyInCheck.MaxRequestBytes = 10
		},
	} {
		mc := good()
		mutate(mc.ExtensionProviders[0].GetEnvoyExtAuthzGrpc())
		if err := checkExtensionProvider(mc, 1024); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := strictProto(map[string]any{"extensionProviders": []any{map[string]any{"name": "x", "envoyExtAuthzGrpc": map[string]any{"failClosed": true}}}}, &meshv1alpha1.MeshConfig{}); err == nil {
		t.Error("unknown MeshConfig field accepted")
	}

	f := false
	port := gatewayv1.PortNumber(authzPort)
	ns := gatewayv1.Namespace("aisecops")
	sp := func() *egv1a1.SecurityPolicy {
		p := &egv1a1.SecurityPolicy{}
		p.Name = "p"
		p.Spec.TargetRefs = []gatewayv1.LocalPolicyTargetReferenceWithSectionName{{LocalPolicyTargetReference: gatewayv1.LocalPolicyTargetReference{Kind: "Gateway", Name: "g"}}}
		p.Spec.ExtAuth = &egv1a1.ExtAuth{FailOpen: &f, BodyToExtAuth: &egv1a1.BodyToExtAuth{MaxRequestBytes: 1024},
			GRPC: &egv1a1.GRPCExtAuthService{BackendCluster: egv1a1.BackendCluster{BackendRefs: []egv1a1.BackendRef{{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: authzService, Namespace: &ns, Port: &port}}}}}}
		return p
	}
	gws := map[string]bool{"g": true}
	if err := checkSecurityPolicy(sp(), gws, 1024); err != nil {
		t.Fatalf("good SecurityPolicy refused: %v", err)
	}
	tr := true
	for name, mutate := range map[string]func(p *egv1a1.SecurityPolicy){
		"fail open":      func(p *egv1a1.SecurityPolicy) { p.Spec.ExtAuth.FailOpen = &tr },
		"failOpen unset": func(p *egv1a1.SecurityPolicy) { p.Spec.ExtAuth.FailOpen = nil },
		"no body":        func(p *egv1a1.SecurityPolicy) { p.Spec.ExtAuth.BodyToExtAuth = nil },
		"context extensions": func(p *egv1a1.SecurityPolicy) {
			p.Spec.ExtAuth.ContextExtensions = []*egv1a1.ContextExtension{{Name: "tool"}}
		},
		"unknown gateway": func(p *egv1a1.SecurityPolicy) { p.Spec.TargetRefs[0].Name = "other" },
		"other backend":   func(p *egv1a1.SecurityPolicy) { p.Spec.ExtAuth.GRPC.BackendRefs[0].Name = "opa" },
	} {
		p := sp()
		mutate(p)
		if err := checkSecurityPolicy(p, gws, 1024); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
