package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	envoy_config_bootstrap_v3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_extensions_transport_sockets_tls_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

// devCertFiles are the files `aisecops dev-certs` writes; every TLS file the
// deploy files name must be one of them.
var devCertFiles = []string{"ca.crt", "authz.crt", "authz.key", "xds.crt", "xds.key", "http.crt", "http.key",
	"envoy.crt", "envoy.key", "authz-replica.crt", "authz-replica.key"}

// devEnvoyNode is the node id in dev-certs' envoy.crt (--envoy-node-id).
const devEnvoyNode = "egress-envoy"

// listenerTLS is, per flag that opens a listener or dials the control plane,
// the TLS flags it needs off loopback (cmd/aisecops/listen.go).
var listenerTLS = map[string][]string{
	"--authz-addr": {"--authz-tls-cert", "--authz-tls-key", "--authz-client-ca"},
	"--xds-addr":   {"--xds-tls-cert", "--xds-tls-key", "--xds-client-ca"},
	"--http-addr":  {"--http-tls-cert", "--http-tls-key"},
	"--xds-server": {"--xds-server-ca", "--xds-client-cert", "--xds-client-key"},
}

// flagValues reads "--k=v" and "--k v" arguments.
func flagValues(args []any) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := str(args[i])
		if !strings.HasPrefix(a, "--") {
			continue
		}
		if k, v, ok := strings.Cut(a, "="); ok {
			out[k] = v
		} else if i+1 < len(args) && !strings.HasPrefix(str(args[i+1]), "--") {
			out[a] = str(args[i+1])
			i++
		} else {
			out[a] = ""
		}
	}
	return out
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return host == "localhost" || (err == nil && ip.IsLoopback())
}

// aisecopsTLSProblems: an aisecops command that listens (or dials the control
// plane) off loopback carries that listener's TLS flags, never
// --insecure-listeners, and names dev-certs files under certDir.
func aisecopsTLSProblems(args []any, certDir string) []string {
	var out []string
	flags := flagValues(args)
	if _, ok := flags["--insecure-listeners"]; ok {
		out = append(out, "--insecure-listeners")
	}
	for addrFlag, need := range listenerTLS {
		addr, ok := flags[addrFlag]
		if !ok || loopback(addr) {
			continue
		}
		for _, f := range need {
			v := flags[f]
			if v == "" {
				out = append(out, fmt.Sprintf("%s %s off loopback without %s", addrFlag, addr, f))
				continue
			}
			if path.Dir(v) != certDir || !slices.Contains(devCertFiles, path.Base(v)) {
				out = append(out, fmt.Sprintf("%s %s is not a dev-certs file in %s", f, v, certDir))
			}
		}
	}
	return out
}

func checkAisecopsTLS(t *testing.T, where string, args []any, certDir string) {
	t.Helper()
	if _, ok := flagValues(args)["--http-addr"]; !ok {
		t.Errorf("%s: no --http-addr in %v", where, args)
	}
	for _, p := range aisecopsTLSProblems(args, certDir) {
		t.Errorf("%s: %s", where, p)
	}
}

func filename(ds *envoy_config_core_v3.DataSource) string { return ds.GetFilename() }

// checkEnvoyTLS: the cluster is mTLS (envoyconfig.CheckMTLSCluster) with
// dev-certs files from certDir.
func checkEnvoyTLS(t *testing.T, where string, b interface {
	GetTransportSocket() *envoy_config_core_v3.TransportSocket
	GetName() string
}, certDir string) {
	t.Helper()
	u := &envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{}
	if err := b.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
		t.Errorf("%s: cluster %s: %v", where, b.GetName(), err)
		return
	}
	files := []string{filename(u.GetCommonTlsContext().GetValidationContext().GetTrustedCa())}
	for _, c := range u.GetCommonTlsContext().GetTlsCertificates() {
		files = append(files, filename(c.GetCertificateChain()), filename(c.GetPrivateKey()))
	}
	for _, f := range files {
		if path.Dir(f) != certDir || !slices.Contains(devCertFiles, path.Base(f)) {
			t.Errorf("%s: cluster %s names %q, not a dev-certs file in %s", where, b.GetName(), f, certDir)
		}
	}
}

// checkADS: the bootstrap's ADS cluster is mTLS from certDir and its node id
// is the one Envoy's certificate names.
func checkADS(t *testing.T, where string, b *envoy_config_bootstrap_v3.Bootstrap, certDir string) {
	t.Helper()
	if id := b.GetNode().GetId(); id != devEnvoyNode {
		t.Errorf("%s: node.id %q, but Envoy's certificate names %q", where, id, devEnvoyNode)
	}
	found := false
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != "aisecops-xds" {
			continue
		}
		found = true
		if err := envoyconfig.CheckMTLSCluster(c); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		checkEnvoyTLS(t, where, c, certDir)
	}
	if !found {
		t.Errorf("%s: no aisecops-xds cluster", where)
	}
}

// checkAuthzCluster: the routes file makes Envoy call ext_authz over mTLS
// with files from certDir.
func checkAuthzCluster(t *testing.T, where string, f *config.File, certDir string) {
	t.Helper()
	res, err := translate.Translate(f, translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Clusters {
		if c.GetName() != translate.AuthzCluster {
			continue
		}
		if err := envoyconfig.CheckMTLSCluster(c); err != nil {
			t.Errorf("%s: %v", where, err)
			return
		}
		checkEnvoyTLS(t, where, c, certDir)
		return
	}
	t.Errorf("%s: no authz cluster", where)
}

// mountOf is where a compose service mounts volume (by name or ./path).
func mountOf(s any, volume string) string {
	vols, _ := dig(s, "volumes").([]any)
	for _, v := range vols {
		parts := strings.Split(str(v), ":")
		if len(parts) >= 2 && parts[0] == volume {
			return parts[1]
		}
	}
	return ""
}

// TestComposeUsesTLS: in the compose stack every aisecops listener is off
// loopback and so speaks TLS, with the certificates the certs service
// writes; Envoy presents its certificate to both our gRPC servers.
func TestComposeUsesTLS(t *testing.T) {
	t.Parallel()
	services := compose(t)["services"].(obj)
	certs := services["certs"]
	if cmd, _ := dig(certs, "command").([]any); len(cmd) == 0 || str(cmd[0]) != "dev-certs" {
		t.Fatalf("certs service does not run dev-certs: %v", dig(certs, "command"))
	}
	out := flagValues(dig(certs, "command").([]any))["--out"]
	if mountOf(certs, "aisecops-certs") != out {
		t.Errorf("dev-certs writes to %s, not to the aisecops-certs volume", out)
	}
	for _, name := range []string{"authz", "xds", "envoy"} {
		if !slices.Contains(dependsOn(services[name]), "certs") {
			t.Errorf("services.%s does not wait for certs", name)
		}
	}
	for _, name := range []string{"authz", "xds"} {
		s := services[name]
		checkAisecopsTLS(t, "services."+name, dig(s, "command").([]any), mountOf(s, "aisecops-certs"))
	}
	envoyCerts := mountOf(services["envoy"], "aisecops-certs")
	data, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoyconfig.ParseBootstrap(data)
	if err != nil {
		t.Fatal(err)
	}
	checkADS(t, "envoy.yaml", b, envoyCerts)
	f, err := config.Load("routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checkAuthzCluster(t, "routes.yaml", f, envoyCerts)
}

// TestKubernetesUsesTLS: the same for the manifests, with the TLS files from
// Secrets and HTTPS probes.
func TestKubernetesUsesTLS(t *testing.T) {
	t.Parallel()
	byName := map[string]obj{}
	for _, m := range kubeObjects(t) {
		byName[str(m["kind"])+"/"+str(dig(m, "metadata", "name"))] = m
	}
	secretMount := func(d obj) string {
		c := dig(d, "spec", "template", "spec", "containers").([]any)[0]
		vols, _ := dig(d, "spec", "template", "spec", "volumes").([]any)
		mounts, _ := dig(c, "volumeMounts").([]any)
		for _, v := range vols {
			if str(dig(v, "secret", "secretName")) == "" || !strings.HasSuffix(str(dig(v, "secret", "secretName")), "-tls") {
				continue
			}
			for _, m := range mounts {
				if str(dig(m, "name")) == str(dig(v, "name")) {
					return str(dig(m, "mountPath"))
				}
			}
		}
		return ""
	}
	for _, name := range []string{"aisecops-authz", "aisecops-xds"} {
		d := byName["Deployment/"+name]
		c := dig(d, "spec", "template", "spec", "containers").([]any)[0]
		dir := secretMount(d)
		if dir == "" {
			t.Errorf("%s: no TLS Secret mounted", name)
		}
		checkAisecopsTLS(t, name, dig(c, "args").([]any), dir)
		for _, probe := range []string{"readinessProbe", "livenessProbe"} {
			if str(dig(c, probe, "httpGet", "scheme")) != "HTTPS" {
				t.Errorf("%s: %s is not HTTPS (the API serves TLS)", name, probe)
			}
		}
	}
	envoyCerts := secretMount(byName["Deployment/aisecops-egress"])
	if envoyCerts == "" {
		t.Fatal("aisecops-egress: no TLS Secret mounted")
	}
	b, err := envoyconfig.ParseBootstrap([]byte(str(dig(byName["ConfigMap/aisecops-envoy"], "data", "envoy.yaml"))))
	if err != nil {
		t.Fatal(err)
	}
	checkADS(t, "ConfigMap/aisecops-envoy", b, envoyCerts)
	f, err := config.Parse("ConfigMap/aisecops-routes", []byte(str(dig(byName["ConfigMap/aisecops-routes"], "data", "routes.yaml"))))
	if err != nil {
		t.Fatal(err)
	}
	checkAuthzCluster(t, "ConfigMap/aisecops-routes", f, envoyCerts)
}

// TestTLSChecksCatchPlaintext keeps checkAisecopsTLS honest.
func TestTLSChecksCatchPlaintext(t *testing.T) {
	t.Parallel()
	tests := map[string][]any{
		"listener without TLS":  {"serve", "--authz-addr=:9191", "--http-addr=127.0.0.1:8181"},
		"insecure listeners":    {"serve", "--authz-addr=127.0.0.1:9191", "--insecure-listeners"},
		"file not from devcert": {"xds", "--xds-addr", ":18000", "--xds-tls-cert=/c/server.pem", "--xds-tls-key=/c/xds.key", "--xds-client-ca=/c/ca.crt"},
		"plaintext xds client":  {"serve", "--xds-server=xds:18000", "--authz-addr=127.0.0.1:9191"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			if len(aisecopsTLSProblems(args, "/c")) == 0 {
				t.Fatal("not caught")
			}
		})
	}
	good := []any{"xds", "--xds-addr=:18000", "--xds-tls-cert=/c/xds.crt", "--xds-tls-key=/c/xds.key", "--xds-client-ca=/c/ca.crt", "--http-addr=127.0.0.1:8182"}
	if p := aisecopsTLSProblems(good, "/c"); len(p) != 0 {
		t.Fatalf("good command refused: %v", p)
	}
}

// TestDevCertsCoverDeployNames runs `aisecops dev-certs` and checks that
// every server name a client in these stacks verifies is in the certificate
// that server presents: the SANs of Envoy's two mTLS clusters and the host of
// each --xds-server.
func TestDevCertsCoverDeployNames(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if out, err := exec.Command("go", "run", "../cmd/aisecops", "dev-certs", "--out", dir).CombinedOutput(); err != nil {
		t.Fatalf("dev-certs: %v\n%s", err, out)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("ca.crt: %v", err)
	}
	verify := func(where, certFile, name string) {
		t.Helper()
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, strings.TrimSuffix(certFile, ".crt")+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kp.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s: %s does not cover %q: %v", where, certFile, name, err)
		}
	}
	sanOf := func(c interface {
		GetTransportSocket() *envoy_config_core_v3.TransportSocket
	}) string {
		u := &envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{}
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
			t.Fatal(err)
		}
		return u.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact()
	}
	byName := map[string]obj{}
	for _, m := range kubeObjects(t) {
		byName[str(m["kind"])+"/"+str(dig(m, "metadata", "name"))] = m
	}
	composeEnvoy, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bootstraps := map[string][]byte{"envoy.yaml": composeEnvoy, "ConfigMap/aisecops-envoy": []byte(str(dig(byName["ConfigMap/aisecops-envoy"], "data", "envoy.yaml")))}
	for where, data := range bootstraps {
		b, err := envoyconfig.ParseBootstrap(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range b.GetStaticResources().GetClusters() {
			if c.GetName() == "aisecops-xds" {
				verify(where, "xds.crt", sanOf(c))
			}
		}
	}
	composeRoutes, err := config.Load("routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kubeRoutes, err := config.Parse("ConfigMap/aisecops-routes", []byte(str(dig(byName["ConfigMap/aisecops-routes"], "data", "routes.yaml"))))
	if err != nil {
		t.Fatal(err)
	}
	for where, f := range map[string]*config.File{"routes.yaml": composeRoutes, "ConfigMap/aisecops-routes": kubeRoutes} {
		res, err := translate.Translate(f, translate.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range res.Clusters {
			if c.GetName() == translate.AuthzCluster {
				verify(where, "authz.crt", sanOf(c))
			}
		}
	}
	services := compose(t)["services"].(obj)
	c := dig(byName["Deployment/aisecops-authz"], "spec", "template", "spec", "containers").([]any)[0]
	for where, args := range map[string][]any{"services.authz": dig(services, "authz", "command").([]any), "Deployment/aisecops-authz": dig(c, "args").([]any)} {
		host, _, err := net.SplitHostPort(flagValues(args)["--xds-server"])
		if err != nil {
			t.Fatalf("%s: --xds-server: %v", where, err)
		}
		verify(where, "xds.crt", host)
	}
}
