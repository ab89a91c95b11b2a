package validate

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

const (
	chartDir  = "../helm/aisecops"
	release   = "aisecops"
	namespace = "aisecops"
)

// kubeVersion is the oldest Kubernetes the chart claims (Chart.yaml
// kubeVersion): native gRPC probes are GA from 1.27.
var kubeVersion = &chartutil.KubeVersion{Version: "v1.27.0", Major: "1", Minor: "27"}

// readValues merges values files left to right, as helm's -f does, then set.
func readValues(t *testing.T, files []string, set map[string]any) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, f := range files {
		v, err := chartutil.ReadValuesFile(filepath.Join(chartDir, f))
		if err != nil {
			t.Fatal(err)
		}
		out = mergeValues(out, v.AsMap())
	}
	return mergeValues(out, set)
}

func mergeValues(dst, src map[string]any) map[string]any {
	out := maps.Clone(dst)
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			if dv, ok := out[k].(map[string]any); ok {
				out[k] = mergeValues(dv, sv)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// rendered is one helm template run, every object decoded strictly.
type rendered struct {
	objs   []runtime.Object
	byName map[string]runtime.Object // "Kind/name"
}

func (r rendered) get(kind, name string) runtime.Object { return r.byName[kind+"/"+name] }

// renderChart runs what `helm template` runs (action.Install, client only,
// dry run) and decodes every manifest strictly.
func renderChart(t *testing.T, vals map[string]any) rendered {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	inst := action.NewInstall(&action.Configuration{})
	inst.DryRun, inst.ClientOnly, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = release, namespace
	inst.KubeVersion = kubeVersion
	rel, err := inst.Run(chrt, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	r := rendered{byName: map[string]runtime.Object{}}
	var errs []error
	for name, m := range releaseutil.SplitManifests(rel.Manifest) {
		obj, err := decodeStrict([]byte(m))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w\n%s", name, err, m))
			continue
		}
		meta, err := metaOf(obj)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		key := kindOf(obj) + "/" + meta.GetName()
		if _, dup := r.byName[key]; dup {
			errs = append(errs, fmt.Errorf("%s rendered twice", key))
		}
		r.byName[key] = obj
		r.objs = append(r.objs, obj)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return r
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// kindOf is the Go type's name, which is the kind for every registered type.
func kindOf(obj runtime.Object) string { return reflect.TypeOf(obj).Elem().Name() }

// variants are the renders every check runs on: both values files, and the
// options the defaults do not take.
func variants(t *testing.T) map[string]map[string]any {
	policies := map[string]any{}
	for _, n := range []string{"authz.rego", "tokens.rego", "data.json"} {
		b, err := os.ReadFile(filepath.Join("../../policies", n))
		if err != nil {
			t.Fatal(err)
		}
		policies[n] = string(b)
	}
	return map[string]map[string]any{
		"values.yaml":                   readValues(t, []string{"values.yaml"}, nil),
		"values-production.yaml":        readValues(t, []string{"values.yaml", "values-production.yaml"}, nil),
		"audit shipper":                 readValues(t, []string{"values.yaml"}, map[string]any{"audit": map[string]any{"mode": "shipper"}}),
		"policies from files":           readValues(t, []string{"values.yaml"}, map[string]any{"policies": map[string]any{"files": policies}}),
		"mesh only (no egress Envoy)":   readValues(t, []string{"values.yaml"}, map[string]any{"egress": map[string]any{"enabled": false}}),
		"workload JWKS from a URL":      readValues(t, []string{"values.yaml"}, map[string]any{"tokenService": map[string]any{"workloadJWKS": map[string]any{"url": "https://oidc.example.com/keys"}}}),
		"Redis Cluster":                 readValues(t, []string{"values.yaml", "values-production.yaml"}, map[string]any{"redis": map[string]any{"external": map[string]any{"urlSecret": map[string]any{"name": ""}, "clusterNodes": []any{"redis-0:6379", "redis-1:6379"}}}}),
		"production without autoscaler": readValues(t, []string{"values.yaml", "values-production.yaml"}, map[string]any{"authz": map[string]any{"autoscaling": map[string]any{"enabled": false}}}),
	}
}

// TestChartLint runs Helm's linter on both values files; warnings fail too.
func TestChartLint(t *testing.T) {
	t.Parallel()
	for _, files := range [][]string{{"values.yaml"}, {"values.yaml", "values-production.yaml"}} {
		name := files[len(files)-1]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l := lint.AllWithKubeVersion(chartDir, readValues(t, files, nil), namespace, kubeVersion)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("%s", m)
				}
			}
		})
	}
}

// TestChartRenders renders each variant and holds every object to the checks
// that matter for this product.
func TestChartRenders(t *testing.T) {
	t.Parallel()
	for name, vals := range variants(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := renderChart(t, vals)
			if err := errors.Join(checkRendered(r, vals)...); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestChartRefusesUnsafeValues: values that would run the service on
// development credentials or without shared state do not render.
func TestChartRefusesUnsafeValues(t *testing.T) {
	t.Parallel()
	tests := map[string]map[string]any{
		"no keys Secret":     {"keys": map[string]any{"existingSecret": ""}},
		"no workload issuer": {"tokenService": map[string]any{"workloadIssuer": ""}},
		"no workload JWKS":   {"tokenService": map[string]any{"workloadJWKS": map[string]any{"configMap": "", "url": ""}}},
		"no shared Redis":    {"redis": map[string]any{"deploy": false}},
		"unknown audit mode": {"audit": map[string]any{"mode": "stdout"}},
	}
	for name, set := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			chrt, err := loader.Load(chartDir)
			if err != nil {
				t.Fatal(err)
			}
			inst := action.NewInstall(&action.Configuration{})
			inst.DryRun, inst.ClientOnly, inst.Replace = true, true, true
			inst.ReleaseName, inst.Namespace, inst.KubeVersion = release, namespace, kubeVersion
			if _, err := inst.Run(chrt, readValues(t, []string{"values.yaml"}, set)); err == nil {
				t.Fatal("rendered")
			}
		})
	}
}

func boolAt(vals map[string]any, path ...string) bool {
	v, _ := dig(vals, path...).(bool)
	return v
}

func strAt(vals map[string]any, path ...string) string {
	v, _ := dig(vals, path...).(string)
	return v
}

func dig(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

const fullname = "aisecops" // the release name contains "aisecops"

// workload is a Deployment or a StatefulSet, seen the same way.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	template   corev1.PodTemplateSpec
	claims     []corev1.PersistentVolumeClaim
}

func workloads(r rendered) []workload {
	var out []workload
	for _, o := range r.objs {
		switch w := o.(type) {
		case *appsv1.Deployment:
			out = append(out, workload{"Deployment", w.Name, w.Spec.Selector, w.Spec.Template, nil})
		case *appsv1.StatefulSet:
			out = append(out, workload{"StatefulSet", w.Name, w.Spec.Selector, w.Spec.Template, w.Spec.VolumeClaimTemplates})
		}
	}
	return out
}

func findWorkload(r rendered, name string) (workload, bool) {
	for _, w := range workloads(r) {
		if w.name == name {
			return w, true
		}
	}
	return workload{}, false
}

func container(w workload, name string) (corev1.Container, bool) {
	for _, c := range w.template.Spec.Containers {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

func argValue(c corev1.Container, flag string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v, true
		}
		if a == flag {
			return "", true
		}
	}
	return "", false
}

// checkRendered returns every problem of one render.
func checkRendered(r rendered, vals map[string]any) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	tls := boolAt(vals, "tls", "enabled")

	// Shapes every workload must have.
	for _, w := range workloads(r) {
		where := w.kind + "/" + w.name
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || sel.Empty() {
			add("%s: selector %v: %v", where, w.selector, err)
		} else if !sel.Matches(labels.Set(w.template.Labels)) {
			add("%s: selector does not match the pod template", where)
		}
		if w.template.Spec.AutomountServiceAccountToken == nil || *w.template.Spec.AutomountServiceAccountToken {
			add("%s: mounts a service-account token it does not use", where)
		}
		for _, c := range w.template.Spec.Containers {
			cw := where + " container " + c.Name
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() ||
				c.Resources.Limits.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
				add("%s: needs CPU and memory requests and limits", cw)
			}
			if c.SecurityContext == nil || c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
				add("%s: allowPrivilegeEscalation must be false", cw)
			}
			if len(c.Ports) > 0 && c.ReadinessProbe == nil {
				add("%s: no readiness probe", cw)
			}
			errs = append(errs, checkMounts(r, w, c, vals)...)
		}
	}

	// The authz service.
	authzName := fullname + "-authz"
	authz, ok := findWorkload(r, authzName)
	if !ok {
		return append(errs, fmt.Errorf("%s: not rendered", authzName))
	}
	c, _ := container(authz, "authz")
	errs = append(errs, checkProbes(c, tls)...)
	errs = append(errs, checkCredentials(r, authz, c, vals)...)
	errs = append(errs, checkAudit(authz, c, vals)...)
	errs = append(errs, checkRedis(r, c, vals)...)
	errs = append(errs, checkRoutes(r, vals)...)
	if tls {
		for _, f := range []string{"--authz-tls-cert", "--authz-tls-key", "--authz-client-ca", "--http-tls-cert", "--http-tls-key", "--xds-client-cert", "--xds-client-key", "--xds-server-ca"} {
			if _, ok := argValue(c, f); !ok {
				add("authz: tls.enabled but no %s", f)
			}
		}
	}
	if _, insecure := argValue(c, "--insecure-listeners"); insecure == tls {
		add("authz: --insecure-listeners must be passed exactly when tls.enabled is false")
	}

	// Scaling and disruption.
	if boolAt(vals, "authz", "autoscaling", "enabled") {
		hpa, _ := r.get("HorizontalPodAutoscaler", authzName).(*autoscalingv2.HorizontalPodAutoscaler)
		if hpa == nil {
			add("authz: autoscaling enabled but no HorizontalPodAutoscaler")
		} else if hpa.Spec.ScaleTargetRef.Kind != authz.kind || hpa.Spec.ScaleTargetRef.Name != authz.name {
			add("HPA targets %s/%s, want %s/%s", hpa.Spec.ScaleTargetRef.Kind, hpa.Spec.ScaleTargetRef.Name, authz.kind, authz.name)
		} else if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 {
			add("HPA minReplicas < 2: one replica is a single point of failure for every tool call")
		}
	} else if r.get("HorizontalPodAutoscaler", authzName) != nil {
		add("authz: autoscaling disabled but an HPA rendered")
	}
	for _, name := range []string{authzName, fullname + "-egress"} {
		pdb, _ := r.get("PodDisruptionBudget", name).(*policyv1.PodDisruptionBudget)
		w, ok := findWorkload(r, name)
		if !ok {
			continue
		}
		if pdb == nil {
			add("%s: no PodDisruptionBudget", name)
			continue
		}
		sel, _ := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if sel == nil || !sel.Matches(labels.Set(w.template.Labels)) {
			add("PodDisruptionBudget %s does not select its pods", name)
		}
	}

	errs = append(errs, checkServices(r)...)
	errs = append(errs, checkEgress(r, vals)...)
	errs = append(errs, checkNetworkPolicy(r, vals)...)
	errs = append(errs, checkServiceMonitors(r, vals)...)
	errs = append(errs, checkObservability(r, vals)...)
	return errs
}

// checkProbes: HTTP readiness and liveness on the API port, and the gRPC
// health service on the ext_authz port while the kubelet can speak to it
// (its gRPC probe has no TLS).
func checkProbes(c corev1.Container, tls bool) []error {
	var errs []error
	scheme := corev1.URISchemeHTTP
	if tls {
		scheme = corev1.URISchemeHTTPS
	}
	for name, p := range map[string]*corev1.Probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port != intstr.FromString("http") || p.HTTPGet.Scheme != scheme {
			errs = append(errs, fmt.Errorf("authz: want an %s probe of %s on port http", scheme, name))
		}
	}
	sp := c.StartupProbe
	switch {
	case sp == nil:
		errs = append(errs, errors.New("authz: no startup probe"))
	case !tls && (sp.GRPC == nil || sp.GRPC.Port != 9191):
		errs = append(errs, errors.New("authz: startup probe is not gRPC health on :9191"))
	case tls && sp.GRPC != nil:
		errs = append(errs, errors.New("authz: gRPC probe under TLS: the kubelet's gRPC probe cannot do TLS"))
	}
	return errs
}

// checkCredentials: no development credentials anywhere. Keys come from a
// Secret the chart does not create, workload credentials from the cluster.
func checkCredentials(r rendered, authz workload, c corev1.Container, vals map[string]any) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, o := range r.objs {
		if s, ok := o.(*corev1.Secret); ok {
			add("Secret %s rendered: the chart must never carry or generate keys", s.Name)
		}
	}
	for _, a := range c.Args {
		if strings.Contains(a, "dev-signing-key") || strings.Contains(a, "--workload ") {
			add("authz: development credential in %q", a)
		}
	}
	if v, _ := argValue(c, "--signing-key"); v == "" {
		add("authz: no --signing-key: the service would create a development key")
	}
	iss, _ := argValue(c, "--workload-issuer")
	if !strings.HasPrefix(iss, "https://") {
		add("authz: --workload-issuer %q: without a real issuer the token service takes development credentials", iss)
	}
	jf, file := argValue(c, "--workload-jwks-file")
	ju, url := argValue(c, "--workload-jwks-url")
	if (jf == "") == (ju == "") || file == url {
		add("authz: want exactly one of --workload-jwks-file, --workload-jwks-url")
	}
	if ns, _ := argValue(c, "--agent-namespace"); ns != strAt(vals, "agents", "namespace") {
		add("authz: --agent-namespace %q, want agents.namespace", ns)
	}
	keySecret := strAt(vals, "keys", "existingSecret")
	for _, v := range authz.template.Spec.Volumes {
		if v.Name == "keys" && (v.Secret == nil || v.Secret.SecretName != keySecret) {
			add("authz: keys volume is not Secret %s", keySecret)
		}
	}
	if strAt(vals, "image", "tag") == "latest" {
		add("image tag latest: pin a release")
	}
	return errs
}

// checkAudit: with audit.mode=volume the log is on a PersistentVolumeClaim per
// replica; with shipper a sidecar reads the same volume.
func checkAudit(authz workload, c corev1.Container, vals map[string]any) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	file, _ := argValue(c, "--audit-file")
	dir := filepath.Dir(file)
	mounted := ""
	for _, m := range c.VolumeMounts {
		if m.MountPath == dir {
			mounted = m.Name
		}
	}
	if file == "" || mounted == "" {
		return []error{fmt.Errorf("authz: --audit-file %q is not on a mounted volume", file)}
	}
	switch strAt(vals, "audit", "mode") {
	case "volume":
		if authz.kind != "StatefulSet" {
			add("audit volume: authz is a %s, want a StatefulSet (one claim per replica)", authz.kind)
		}
		if !slices.ContainsFunc(authz.claims, func(p corev1.PersistentVolumeClaim) bool {
			return p.Name == mounted && !p.Spec.Resources.Requests.Storage().IsZero()
		}) {
			add("audit volume %s is not a PersistentVolumeClaim with a size", mounted)
		}
		if slices.ContainsFunc(authz.template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == mounted }) {
			add("audit volume %s is also a pod volume (it would shadow the claim)", mounted)
		}
	case "shipper":
		shipper, ok := container(authz, strAt(vals, "audit", "shipper", "name"))
		if !ok || !slices.ContainsFunc(shipper.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == mounted }) {
			add("audit shipper does not mount the audit volume")
		}
	}
	return errs
}

// checkRedis: the chart's Redis keeps an append-only file on a claim; an
// external one is reached through a Secret, never a literal URL.
func checkRedis(r rendered, c corev1.Container, vals map[string]any) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if boolAt(vals, "redis", "deploy") {
		redis, ok := findWorkload(r, fullname+"-redis")
		if !ok {
			return []error{errors.New("redis.deploy but no Redis workload")}
		}
		rc, _ := container(redis, "redis")
		args := strings.Join(rc.Args, " ")
		if !strings.Contains(args, "--appendonly yes") {
			add("Redis without AOF (--appendonly yes): a restart would forget spent tokens and run budgets")
		}
		dataDir := "/data"
		if i := slices.Index(rc.Args, "--dir"); i >= 0 && i+1 < len(rc.Args) {
			dataDir = rc.Args[i+1]
		}
		onClaim := false
		for _, m := range rc.VolumeMounts {
			if m.MountPath == dataDir && slices.ContainsFunc(redis.claims, func(p corev1.PersistentVolumeClaim) bool { return p.Name == m.Name }) {
				onClaim = true
			}
		}
		if !onClaim {
			add("Redis data dir %s is not on a PersistentVolumeClaim", dataDir)
		}
		if u, _ := argValue(c, "--redis-url"); !strings.Contains(u, fullname+"-redis.") {
			add("authz --redis-url %q is not the chart's Redis", u)
		}
		return errs
	}
	if _, ok := findWorkload(r, fullname+"-redis"); ok {
		add("redis.deploy=false but a Redis workload rendered")
	}
	if u, ok := argValue(c, "--redis-url"); ok {
		add("authz: literal --redis-url %q: an external URL (and its password) must come from a Secret", u)
	}
	fromSecret := slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "AISECOPS_REDIS_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
	})
	cluster, _ := argValue(c, "--redis-cluster")
	if !fromSecret && cluster == "" {
		add("authz: no run-state store: neither AISECOPS_REDIS_URL from a Secret nor --redis-cluster")
	}
	return errs
}

// checkRoutes: the routes ConfigMap is a valid routes file that translates,
// and names the headless authz Service.
func checkRoutes(r rendered, vals map[string]any) []error {
	cm, _ := r.get("ConfigMap", fullname+"-routes").(*corev1.ConfigMap)
	if cm == nil {
		return []error{errors.New("routes ConfigMap missing")}
	}
	raw := []byte(cm.Data["routes.yaml"])
	var errs []error
	if boolAt(vals, "tls", "enabled") {
		var doc map[string]any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			return []error{err}
		}
		tls, _ := dig(doc, "authz", "tls").(map[string]any)
		for _, k := range []string{"ca_file", "cert_file", "key_file"} {
			if f, _ := tls[k].(string); !strings.HasPrefix(f, "/etc/envoy/tls/") {
				errs = append(errs, fmt.Errorf("routes authz.tls.%s %q: want a file the egress Envoy mounts from its TLS Secret", k, f))
			}
		}
	}
	f, err := config.Parse("ConfigMap/"+cm.Name, raw)
	if err != nil {
		return append(errs, err)
	}
	res, err := translate.Translate(f, translate.Options{})
	if err != nil {
		return []error{fmt.Errorf("routes file does not translate: %w", err)}
	}
	n := 0
	for _, m := range res.All() {
		for _, h := range envoyconfig.HTTPConnectionManagers(m) {
			n++
			if err := envoyconfig.CheckPathHandling(h); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if n == 0 {
		errs = append(errs, errors.New("translated routes hold no HTTP connection manager"))
	}
	host, port, err := net.SplitHostPort(f.Authz.Address)
	if err != nil {
		return append(errs, err)
	}
	svc, _ := r.get("Service", strings.SplitN(host, ".", 2)[0]).(*corev1.Service)
	switch {
	case svc == nil:
		errs = append(errs, fmt.Errorf("authz.address %s: no such Service in the release", f.Authz.Address))
	case svc.Spec.ClusterIP != corev1.ClusterIPNone:
		errs = append(errs, fmt.Errorf("authz.address %s is not headless: Envoy would pin to one replica", f.Authz.Address))
	case host != svc.Name+"."+namespace+".svc.cluster.local" || port != "9191":
		errs = append(errs, fmt.Errorf("authz.address %s: want %s.%s.svc.cluster.local:9191", f.Authz.Address, svc.Name, namespace))
	}
	return errs
}

// checkServices: every Service selects a workload and targets its ports.
func checkServices(r rendered) []error {
	var errs []error
	for _, o := range r.objs {
		svc, ok := o.(*corev1.Service)
		if !ok {
			continue
		}
		matched := false
		for _, w := range workloads(r) {
			if len(svc.Spec.Selector) == 0 || !isSubset(svc.Spec.Selector, w.template.Labels) {
				continue
			}
			matched = true
			for _, p := range svc.Spec.Ports {
				if !hasPort(w.template.Spec, p.TargetPort) {
					errs = append(errs, fmt.Errorf("Service %s port %s: %s has no port %s", svc.Name, p.Name, w.name, p.TargetPort.String()))
				}
			}
		}
		if !matched {
			errs = append(errs, fmt.Errorf("Service %s selects no workload", svc.Name))
		}
	}
	return errs
}

func isSubset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func hasPort(spec corev1.PodSpec, p intstr.IntOrString) bool {
	for _, c := range spec.Containers {
		for _, cp := range c.Ports {
			if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
				return true
			}
		}
	}
	return false
}

// checkMounts: every mount names a pod volume or claim, and every ConfigMap
// volume is one the release renders or the one the values name as the user's.
func checkMounts(r rendered, w workload, c corev1.Container, vals map[string]any) []error {
	var errs []error
	vols := map[string]corev1.Volume{}
	for _, v := range w.template.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok && !slices.ContainsFunc(w.claims, func(p corev1.PersistentVolumeClaim) bool { return p.Name == m.Name }) {
			errs = append(errs, fmt.Errorf("%s/%s: mount %s names no volume", w.kind, w.name, m.Name))
			continue
		}
		if v.ConfigMap != nil && v.ConfigMap.Name != strAt(vals, "tokenService", "workloadJWKS", "configMap") {
			cm, _ := r.get("ConfigMap", v.ConfigMap.Name).(*corev1.ConfigMap)
			if cm == nil {
				errs = append(errs, fmt.Errorf("%s/%s: ConfigMap %s is not rendered", w.kind, w.name, v.ConfigMap.Name))
			} else if m.SubPath != "" && cm.Data[m.SubPath] == "" {
				errs = append(errs, fmt.Errorf("%s/%s: ConfigMap %s has no key %s", w.kind, w.name, cm.Name, m.SubPath))
			}
		}
	}
	return errs
}

// checkEgress: the Envoy bootstrap passes Envoy's API validation and dials
// the control plane's Service; the listener port is the routes file's.
func checkEgress(r rendered, vals map[string]any) []error {
	egress, ok := findWorkload(r, fullname+"-egress")
	if !boolAt(vals, "egress", "enabled") {
		if ok {
			return []error{errors.New("egress.enabled=false but an egress Envoy rendered")}
		}
		return nil
	}
	if !ok {
		return []error{errors.New("egress Envoy not rendered")}
	}
	cm, _ := r.get("ConfigMap", fullname+"-envoy").(*corev1.ConfigMap)
	if cm == nil {
		return []error{errors.New("Envoy bootstrap ConfigMap missing")}
	}
	data := []byte(cm.Data["envoy.yaml"])
	if err := envoyconfig.ValidateBootstrapYAML(data); err != nil {
		return []error{fmt.Errorf("Envoy bootstrap: %w", err)}
	}
	b, err := envoyconfig.ParseBootstrap(data)
	if err != nil {
		return []error{err}
	}
	var errs []error
	want := net.JoinHostPort(fullname+"-xds."+namespace+".svc.cluster.local", "18000")
	for _, cl := range b.GetStaticResources().GetClusters() {
		sa := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		got := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		if got != want {
			errs = append(errs, fmt.Errorf("Envoy bootstrap cluster %s dials %s, want the control plane %s", cl.GetName(), got, want))
		}
		if tls := boolAt(vals, "tls", "enabled"); tls != (cl.GetTransportSocket() != nil) {
			errs = append(errs, fmt.Errorf("Envoy bootstrap cluster %s: TLS transport socket present = %v, tls.enabled = %v", cl.GetName(), !tls, tls))
		}
	}
	c, _ := container(egress, "envoy")
	port, _ := dig(vals, "routes", "listener", "port").(float64)
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != int32(port) {
		errs = append(errs, fmt.Errorf("egress Envoy ports %v, want the routes listener port %v", c.Ports, port))
	}
	return errs
}

// checkNetworkPolicy: agent pods may reach the egress Envoy's listener, cluster
// DNS and (when allowed) the token service, and nothing else: no rule without
// a peer, no peer without a selector, no IP blocks, no rule without ports.
func checkNetworkPolicy(r rendered, vals map[string]any) []error {
	if !boolAt(vals, "egress", "enabled") {
		return nil
	}
	np, _ := r.get("NetworkPolicy", fullname+"-agents-egress").(*networkingv1.NetworkPolicy)
	if np == nil {
		return []error{errors.New("no NetworkPolicy confining the agents")}
	}
	egress, _ := findWorkload(r, fullname+"-egress")
	authz, _ := findWorkload(r, fullname+"-authz")
	port, _ := dig(vals, "routes", "listener", "port").(float64)
	return checkAgentEgress(np, agentEgressWant{
		agentNamespace: strAt(vals, "agents", "namespace"),
		releaseNS:      namespace,
		envoyPods:      egress.template.Labels,
		envoyPort:      int32(port),
		authzPods:      authz.template.Labels,
		tokenService:   boolAt(vals, "tokenService", "allowFromAgents"),
		dnsNamespace:   strAt(vals, "networkPolicy", "dns", "namespace"),
	})
}

type agentEgressWant struct {
	agentNamespace, releaseNS string
	envoyPods, authzPods      map[string]string
	envoyPort                 int32
	tokenService              bool
	dnsNamespace              string
}

func checkAgentEgress(np *networkingv1.NetworkPolicy, want agentEgressWant) []error {
	var errs []error
	add := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("NetworkPolicy %s: "+format, append([]any{np.Name}, a...)...))
	}
	if np.Namespace != want.agentNamespace {
		add("in namespace %q, want the agents' %q", np.Namespace, want.agentNamespace)
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		add("policyTypes %v lack Egress: egress would be unrestricted", np.Spec.PolicyTypes)
	}
	reached := map[string]bool{}
	for i, rule := range np.Spec.Egress {
		if len(rule.To) == 0 {
			add("egress[%d] has no peers: it allows every destination", i)
			continue
		}
		if len(rule.Ports) == 0 {
			add("egress[%d] has no ports: it allows every port", i)
		}
		for j, peer := range rule.To {
			if peer.IPBlock != nil {
				add("egress[%d].to[%d] is an ipBlock %s", i, j, peer.IPBlock.CIDR)
				continue
			}
			if peer.PodSelector == nil || len(peer.PodSelector.MatchLabels)+len(peer.PodSelector.MatchExpressions) == 0 ||
				peer.NamespaceSelector == nil || len(peer.NamespaceSelector.MatchLabels)+len(peer.NamespaceSelector.MatchExpressions) == 0 {
				add("egress[%d].to[%d] needs a namespace and a pod selector, else it allows whole namespaces or the agents' own", i, j)
				continue
			}
			ns := peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
			pods := peer.PodSelector.MatchLabels
			var target string
			var ports []int32
			switch {
			case ns == want.releaseNS && isSubset(pods, want.envoyPods):
				target, ports = "envoy", []int32{want.envoyPort}
			case ns == want.releaseNS && isSubset(pods, want.authzPods) && want.tokenService:
				target, ports = "token service", []int32{8181}
			case ns == want.dnsNamespace:
				target, ports = "dns", []int32{53}
			default:
				add("egress[%d].to[%d] (%v in %q) is neither the egress Envoy, the token service nor DNS", i, j, pods, ns)
				continue
			}
			reached[target] = true
			for _, p := range rule.Ports {
				if p.Port == nil || !slices.Contains(ports, p.Port.IntVal) || p.EndPort != nil {
					add("egress[%d] opens port %v to %s, want only %v", i, p.Port, target, ports)
				}
			}
		}
	}
	if !reached["envoy"] || !reached["dns"] {
		add("agents cannot reach the egress Envoy and DNS (%v)", reached)
	}
	return errs
}

// checkServiceMonitors: each ServiceMonitor selects a Service that has the
// port it scrapes, with TLS settings that match the listener.
func checkServiceMonitors(r rendered, vals map[string]any) []error {
	var errs []error
	var n int
	for _, o := range r.objs {
		sm, ok := o.(*monitoringv1.ServiceMonitor)
		if !ok {
			continue
		}
		n++
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ep := range sm.Spec.Endpoints {
			found := false
			for _, o := range r.objs {
				if svc, ok := o.(*corev1.Service); ok && sel.Matches(labels.Set(svc.Labels)) &&
					slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
					found = true
				}
			}
			if !found {
				errs = append(errs, fmt.Errorf("ServiceMonitor %s: no selected Service has port %s", sm.Name, ep.Port))
			}
			if tls := boolAt(vals, "tls", "enabled"); tls != (ep.Scheme != nil && *ep.Scheme == "https") {
				errs = append(errs, fmt.Errorf("ServiceMonitor %s: scheme %v with tls.enabled=%v", sm.Name, ep.Scheme, tls))
			}
		}
	}
	if want := boolAt(vals, "metrics", "serviceMonitor", "enabled"); want != (n == 2) {
		errs = append(errs, fmt.Errorf("%d ServiceMonitors with metrics.serviceMonitor.enabled=%v, want 2 or none", n, want))
	}
	return errs
}

// checkObservability: the collector config and the dashboard in the chart are
// the files in deploy/observability, byte for byte.
func checkObservability(r rendered, vals map[string]any) []error {
	var errs []error
	for _, f := range []struct {
		enabled       []string
		cm, key, file string
	}{
		{[]string{"otelCollector", "enabled"}, fullname + "-otel-collector", "config.yaml", "otel-collector.yaml"},
		{[]string{"grafanaDashboard", "enabled"}, fullname + "-grafana-dashboard", "aisecops.json", "grafana-dashboard.json"},
	} {
		cm, _ := r.get("ConfigMap", f.cm).(*corev1.ConfigMap)
		if !boolAt(vals, f.enabled...) {
			if cm != nil {
				errs = append(errs, fmt.Errorf("%s rendered while disabled", f.cm))
			}
			continue
		}
		want, err := os.ReadFile(filepath.Join("../observability", f.file))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cm == nil || strings.TrimSpace(cm.Data[f.key]) != strings.TrimSpace(string(want)) {
			errs = append(errs, fmt.Errorf("ConfigMap %s does not hold deploy/observability/%s", f.cm, f.file))
		}
	}
	return errs
}

// TestNetworkPolicyCheckCatchesLeaks: each way of letting agents out past
// Envoy must be reported by checkNetworkPolicy.
func TestNetworkPolicyCheckCatchesLeaks(t *testing.T) {
	t.Parallel()
	vals := readValues(t, []string{"values.yaml"}, nil)
	r := renderChart(t, vals)
	if errs := checkNetworkPolicy(r, vals); len(errs) > 0 {
		t.Fatalf("rendered policy refused: %v", errs)
	}
	key := "NetworkPolicy/" + fullname + "-agents-egress"
	tcp := corev1.ProtocolTCP
	p443 := intstr.FromInt32(443)
	tests := map[string]func(np *networkingv1.NetworkPolicy){
		"rule without peers": func(np *networkingv1.NetworkPolicy) {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: np.Spec.Egress[0].Ports})
		},
		"ip block": func(np *networkingv1.NetworkPolicy) {
			np.Spec.Egress[0].To = append(np.Spec.Egress[0].To, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}})
		},
		"no Egress policy type": func(np *networkingv1.NetworkPolicy) {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		},
		"another port to Envoy": func(np *networkingv1.NetworkPolicy) {
			np.Spec.Egress[0].Ports = append(np.Spec.Egress[0].Ports, networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p443})
		},
		"rule without ports": func(np *networkingv1.NetworkPolicy) { np.Spec.Egress[0].Ports = nil },
		"whole namespace":    func(np *networkingv1.NetworkPolicy) { np.Spec.Egress[0].To[0].PodSelector = nil },
		"wrong namespace":    func(np *networkingv1.NetworkPolicy) { np.Namespace = "default" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			np := r.get("NetworkPolicy", fullname+"-agents-egress").(*networkingv1.NetworkPolicy).DeepCopy()
			mutate(np)
			rr := rendered{objs: r.objs, byName: maps.Clone(r.byName)}
			rr.byName[key] = np
			if errs := checkNetworkPolicy(rr, vals); len(errs) == 0 {
				t.Fatal("not caught")
			}
		})
	}
}
