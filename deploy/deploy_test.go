// Package deploy_test checks the deployment files a user runs without us: the
// compose stack and the Kubernetes manifests parse, carry the keys their tools
// require, reference what exists, and every Envoy bootstrap in them passes
// Envoy's own API validation (xds/envoyconfig). Docker and kubectl are not
// available on the build machines, so this is the whole of their verification.
package deploy_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

type obj = map[string]any

// dig walks nested maps; nil when a key is missing or not a map.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(obj)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string { s, _ := v.(string); return s }

// docs splits a multi-document YAML file and decodes each non-empty document.
func docs(data []byte) ([]obj, error) {
	docSep := regexp.MustCompile(`(?m)^---[ \t]*$`)
	var out []obj
	for i, part := range docSep.Split(string(data), -1) {
		var m obj
		if err := yaml.Unmarshal([]byte(part), &m); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(m) > 0 {
			out = append(out, m)
		}
	}
	return out, nil
}

// checkCompose returns every problem with a compose file's shape.
func checkCompose(c obj) []error {
	var errs []error
	services, ok := c["services"].(obj)
	if !ok || len(services) == 0 {
		return []error{errors.New("services: missing or empty")}
	}
	for name, s := range services {
		if str(dig(s, "image")) == "" && dig(s, "build") == nil {
			errs = append(errs, fmt.Errorf("services.%s: neither image nor build", name))
		}
		ports, _ := dig(s, "ports").([]any)
		expose, _ := dig(s, "expose").([]any)
		oneShot := str(dig(s, "restart")) == "no" // a job that runs and exits (dev-certs)
		if len(ports)+len(expose) == 0 && !oneShot {
			errs = append(errs, fmt.Errorf("services.%s: no ports or expose", name))
		}
		for _, d := range dependsOn(s) {
			if _, ok := services[d]; !ok {
				errs = append(errs, fmt.Errorf("services.%s.depends_on: no service %v", name, d))
			}
		}
	}
	return errs
}

// dependsOn lists a compose service's dependencies, in either of compose's
// forms (a list of names, or a map of name to condition).
func dependsOn(s any) []string {
	var out []string
	switch d := dig(s, "depends_on").(type) {
	case []any:
		for _, n := range d {
			out = append(out, str(n))
		}
	case obj:
		for n := range d {
			out = append(out, n)
		}
	}
	return out
}

// checkManifest returns every problem with one Kubernetes object.
func checkManifest(m obj) []error {
	var errs []error
	kind, name := str(m["kind"]), str(dig(m, "metadata", "name"))
	where := kind + "/" + name
	if str(m["apiVersion"]) == "" {
		errs = append(errs, fmt.Errorf("%s: apiVersion missing", where))
	}
	if kind == "" {
		errs = append(errs, fmt.Errorf("%s: kind missing", where))
	}
	if name == "" {
		errs = append(errs, fmt.Errorf("%s: metadata.name missing", where))
	}
	switch kind {
	case "Deployment":
		containers, _ := dig(m, "spec", "template", "spec", "containers").([]any)
		if len(containers) == 0 {
			errs = append(errs, fmt.Errorf("%s: spec.template.spec.containers empty", where))
		}
		for i, c := range containers {
			if str(dig(c, "image")) == "" {
				errs = append(errs, fmt.Errorf("%s: containers[%d].image missing", where, i))
			}
			ports, _ := dig(c, "ports").([]any)
			if len(ports) == 0 {
				errs = append(errs, fmt.Errorf("%s: containers[%d].ports empty", where, i))
			}
			for j, p := range ports {
				if n, ok := dig(p, "containerPort").(float64); !ok || n < 1 || n > 65535 {
					errs = append(errs, fmt.Errorf("%s: containers[%d].ports[%d].containerPort invalid", where, i, j))
				}
			}
		}
		sel, _ := dig(m, "spec", "selector", "matchLabels").(obj)
		labels, _ := dig(m, "spec", "template", "metadata", "labels").(obj)
		if len(sel) == 0 {
			errs = append(errs, fmt.Errorf("%s: spec.selector.matchLabels empty", where))
		}
		for k, v := range sel {
			if labels[k] != v {
				errs = append(errs, fmt.Errorf("%s: selector %s=%v does not match the pod template", where, k, v))
			}
		}
	case "Service":
		if ports, _ := dig(m, "spec", "ports").([]any); len(ports) == 0 {
			errs = append(errs, fmt.Errorf("%s: spec.ports empty", where))
		}
	}
	return errs
}

func readDocs(t *testing.T, path string) []obj {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := docs(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return ds
}

func compose(t *testing.T) obj {
	t.Helper()
	ds := readDocs(t, "docker-compose.yaml")
	if len(ds) != 1 {
		t.Fatalf("docker-compose.yaml: %d documents, want 1", len(ds))
	}
	return ds[0]
}

func TestComposeFile(t *testing.T) {
	t.Parallel()
	c := compose(t)
	if errs := checkCompose(c); len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	services := c["services"].(obj)
	for _, want := range []string{"envoy", "authz", "xds", "redis", "echo"} {
		if _, ok := services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	if img := str(dig(services, "envoy", "image")); !strings.HasPrefix(img, "envoyproxy/envoy:v1.") {
		t.Errorf("envoy image %q, want envoyproxy/envoy:v1.x", img)
	}
	if img := str(dig(services, "redis", "image")); img != "redis:7" {
		t.Errorf("redis image %q, want redis:7", img)
	}
	for _, s := range []string{"authz", "xds"} {
		ctx := str(dig(services, s, "build", "context"))
		df := str(dig(services, s, "build", "dockerfile"))
		if _, err := os.Stat(filepath.Join(ctx, df)); err != nil {
			t.Errorf("services.%s.build: %v", s, err)
		}
	}
	// Every bind-mounted file exists next to the compose file.
	for name, s := range services {
		vols, _ := dig(s, "volumes").([]any)
		for _, v := range vols {
			src := strings.SplitN(str(v), ":", 2)[0]
			if !strings.HasPrefix(src, "./") {
				continue
			}
			if _, err := os.Stat(src); err != nil {
				t.Errorf("services.%s.volumes: %v", name, err)
			}
		}
	}
}

// TestComposeWiring: the names in routes.yaml and envoy.yaml are compose
// services listening where the other side dials.
func TestComposeWiring(t *testing.T) {
	t.Parallel()
	services := compose(t)["services"].(obj)
	f, err := config.Load("routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res, err := translate.Translate(f, translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := checkPathHandling(t, "routes.yaml translated", res.All()...); n == 0 {
		t.Error("routes.yaml translated: no HTTP connection manager")
	}
	host, port, err := net.SplitHostPort(f.Authz.Address)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := services[host]; !ok {
		t.Errorf("authz.address %s: no compose service %s", f.Authz.Address, host)
	}
	if !argsContain(dig(services, host, "command"), "--authz-addr=:"+port) {
		t.Errorf("service %s does not listen on :%s", host, port)
	}
	for _, tool := range f.Tools {
		if _, ok := services[tool.Upstream.Address]; !ok {
			t.Errorf("tool %s: upstream %s is no compose service", tool.Name, tool.Upstream.Address)
		}
	}

	data, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoyconfig.ParseBootstrap(data)
	if err != nil {
		t.Fatal(err)
	}
	var xds string
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "aisecops-xds" {
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			xds = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	xh, xp, _ := net.SplitHostPort(xds)
	if _, ok := services[xh]; !ok {
		t.Errorf("envoy.yaml ADS cluster %q: no compose service", xds)
	}
	if !argsContain(dig(services, xh, "command"), "--xds-addr=:"+xp) {
		t.Errorf("service %s does not listen on :%s", xh, xp)
	}
	if !argsContain(dig(services, "authz", "command"), "--xds-server="+xds) {
		t.Errorf("authz does not take budgets from %s", xds)
	}
	if !argsContain(dig(services, "envoy", "ports"), fmt.Sprintf("%d:%d", f.Listener.Port, f.Listener.Port)) {
		t.Errorf("envoy does not publish the egress listener port %d", f.Listener.Port)
	}
}

func argsContain(v any, want string) bool {
	list, _ := v.([]any)
	return slices.ContainsFunc(list, func(a any) bool { return str(a) == want })
}

// TestEnvoyBootstraps: every Envoy bootstrap we ship for deployment passes
// Envoy's API validation with every Any unpacked.
func TestEnvoyBootstraps(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := envoyconfig.ValidateBootstrapYAML(data); err != nil {
		t.Fatalf("envoy.yaml: %v", err)
	}
	b, err := envoyconfig.ParseBootstrap(data)
	if err != nil {
		t.Fatal(err)
	}
	checkPathHandling(t, "envoy.yaml", b)
	found := false
	for _, m := range kubeObjects(t) {
		if m["kind"] != "ConfigMap" {
			continue
		}
		if s := str(dig(m, "data", "envoy.yaml")); s != "" {
			found = true
			where := "ConfigMap " + str(dig(m, "metadata", "name")) + " envoy.yaml"
			if err := envoyconfig.ValidateBootstrapYAML([]byte(s)); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			if b, err := envoyconfig.ParseBootstrap([]byte(s)); err == nil {
				checkPathHandling(t, where, b)
			}
		}
	}
	if !found {
		t.Error("no Envoy bootstrap ConfigMap in kubernetes/")
	}
}

// checkPathHandling holds every HTTP connection manager packed anywhere in ms
// (today the ADS bootstraps hold none; the translated routes hold the
// listener's) to envoyconfig.CheckPathHandling, and returns how many it found.
func checkPathHandling(t *testing.T, where string, ms ...proto.Message) int {
	t.Helper()
	n := 0
	for _, m := range ms {
		for _, h := range envoyconfig.HTTPConnectionManagers(m) {
			n++
			if err := envoyconfig.CheckPathHandling(h); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
	}
	return n
}

func kubeObjects(t *testing.T) []obj {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	var out []obj
	for _, f := range files {
		out = append(out, readDocs(t, f)...)
	}
	return out
}

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	objs := kubeObjects(t)
	byKindName := map[string]obj{}
	for _, m := range objs {
		if errs := checkManifest(m); len(errs) > 0 {
			t.Error(errors.Join(errs...))
		}
		byKindName[str(m["kind"])+"/"+str(dig(m, "metadata", "name"))] = m
	}
	for _, want := range []string{"Deployment/aisecops-authz", "Service/aisecops-authz", "Deployment/aisecops-xds",
		"Service/aisecops-xds", "ConfigMap/aisecops-routes", "Deployment/aisecops-redis", "Deployment/aisecops-egress"} {
		if byKindName[want] == nil {
			t.Errorf("%s missing", want)
		}
	}
	if r := dig(byKindName["Deployment/aisecops-authz"], "spec", "replicas"); r != float64(2) {
		t.Errorf("authz replicas = %v, want 2", r)
	}

	// Every Service selects some Deployment's pods.
	for key, m := range byKindName {
		if m["kind"] != "Service" {
			continue
		}
		sel, _ := dig(m, "spec", "selector").(obj)
		matched := false
		for _, d := range byKindName {
			labels, _ := dig(d, "spec", "template", "metadata", "labels").(obj)
			if d["kind"] == "Deployment" && len(sel) > 0 && subset(sel, labels) {
				matched = true
			}
		}
		if !matched {
			t.Errorf("%s selects no Deployment", key)
		}
	}

	// The routes file is valid, translates, and names the headless authz Service.
	f, err := config.Parse("ConfigMap/aisecops-routes", []byte(str(dig(byKindName["ConfigMap/aisecops-routes"], "data", "routes.yaml"))))
	if err != nil {
		t.Fatal(err)
	}
	res, err := translate.Translate(f, translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := checkPathHandling(t, "ConfigMap/aisecops-routes translated", res.All()...); n == 0 {
		t.Error("ConfigMap/aisecops-routes translated: no HTTP connection manager")
	}
	host, _, err := net.SplitHostPort(f.Authz.Address)
	if err != nil {
		t.Fatal(err)
	}
	svc := strings.SplitN(host, ".", 2)[0]
	if dig(byKindName["Service/"+svc], "spec", "clusterIP") != "None" {
		t.Errorf("authz.address %s is not a headless Service: Envoy would pin to one replica", f.Authz.Address)
	}
}

func subset(sel, labels obj) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestChecksCatchBrokenFiles keeps the shape checks honest: each broken input
// must be reported.
func TestChecksCatchBrokenFiles(t *testing.T) {
	t.Parallel()
	deployment := func() obj {
		return obj{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": obj{"name": "d"},
			"spec": obj{"selector": obj{"matchLabels": obj{"app": "a"}}, "template": obj{
				"metadata": obj{"labels": obj{"app": "a"}},
				"spec":     obj{"containers": []any{obj{"name": "c", "image": "i", "ports": []any{obj{"containerPort": float64(80)}}}}}}}}
	}
	if errs := checkManifest(deployment()); len(errs) != 0 {
		t.Fatalf("good deployment rejected: %v", errs)
	}
	tests := map[string]func(m obj){
		"no apiVersion": func(m obj) { delete(m, "apiVersion") },
		"no name":       func(m obj) { delete(m["metadata"].(obj), "name") },
		"no containers": func(m obj) { dig(m, "spec", "template", "spec").(obj)["containers"] = []any{} },
		"no image":      func(m obj) { delete(dig(m, "spec", "template", "spec", "containers").([]any)[0].(obj), "image") },
		"no ports":      func(m obj) { delete(dig(m, "spec", "template", "spec", "containers").([]any)[0].(obj), "ports") },
		"bad containerPort": func(m obj) {
			dig(m, "spec", "template", "spec", "containers").([]any)[0].(obj)["ports"] = []any{obj{"containerPort": "http"}}
		},
		"selector mismatch": func(m obj) { dig(m, "spec", "selector").(obj)["matchLabels"] = obj{"app": "b"} },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			m := deployment()
			mutate(m)
			if errs := checkManifest(m); len(errs) == 0 {
				t.Fatal("not caught")
			}
		})
	}
	if errs := checkManifest(obj{"apiVersion": "v1", "kind": "Service", "metadata": obj{"name": "s"}, "spec": obj{}}); len(errs) == 0 {
		t.Error("Service without ports not caught")
	}

	composeTests := map[string]obj{
		"no services":        {},
		"no image or build":  {"services": obj{"a": obj{"ports": []any{"1:1"}}}},
		"no ports":           {"services": obj{"a": obj{"image": "x"}}},
		"unknown depends_on": {"services": obj{"a": obj{"image": "x", "expose": []any{"1"}, "depends_on": []any{"b"}}}},
		"unknown depends_on, map form": {"services": obj{"a": obj{"image": "x", "expose": []any{"1"},
			"depends_on": obj{"b": obj{"condition": "service_started"}}}}},
	}
	for name, c := range composeTests {
		t.Run("compose "+name, func(t *testing.T) {
			if errs := checkCompose(c); len(errs) == 0 {
				t.Fatal("not caught")
			}
		})
	}
	if _, err := docs([]byte("a: [1\n---\nb: 2\n")); err == nil {
		t.Error("unparsable YAML not caught")
	}
}

// TestBinaryCarriesNoDeployDependencies: the libraries deploy/validate checks
// the deployment files with (Helm, client-go, the mesh APIs) live in that
// module only; none may reach the product's binary.
func TestBinaryCarriesNoDeployDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "../cmd/aisecops").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	banned := []string{"helm.sh/", "k8s.io/", "istio.io/", "sigs.k8s.io/gateway-api", "github.com/envoyproxy/gateway/",
		"github.com/prometheus-operator/", "github.com/prometheus/prometheus/", "github.com/aisecops/aisecops-envoy/deploy"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, b := range banned {
			if strings.HasPrefix(pkg, b) {
				t.Errorf("the binary depends on %s", pkg)
			}
		}
	}
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mod), "deploy/validate") {
		t.Error("go.mod names deploy/validate: the product must not depend on it")
	}
}
