package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	xdsserver "github.com/aisecops/aisecops-envoy/xds/server"
)

// Development PKI: names of what `aisecops dev-certs` writes.
const (
	devCA          = "ca"            // the CA of everything below
	devAuthzServer = "authz"         // ext_authz gRPC server
	devXDSServer   = "xds"           // xDS server
	devHTTPServer  = "http"          // HTTP API server
	devEnvoyClient = "envoy"         // Envoy: ext_authz and xDS client
	devReplica     = "authz-replica" // an authz replica's xDS client identity
)

// Server names each development server certificate carries besides the
// loopback names and --hosts: the compose services and the Kubernetes
// Services in deploy/.
var devServerNames = map[string][]string{
	devAuthzServer: {"authz", "aisecops-authz", "aisecops-authz.aisecops.svc", "aisecops-authz.aisecops.svc.cluster.local",
		"aisecops-authz-headless", "aisecops-authz-headless.aisecops.svc", "aisecops-authz-headless.aisecops.svc.cluster.local"},
	devXDSServer: {"xds", "aisecops-xds", "aisecops-xds.aisecops.svc", "aisecops-xds.aisecops.svc.cluster.local"},
}

// runDevCerts writes a development CA and the certificates every listener
// and client needs (ECDSA P-256): `aisecops dev-certs --out DIR`.
func runDevCerts(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev-certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory to write the CA, keys and certificates to (required)")
	hosts := fs.String("hosts", "", "comma-separated extra DNS names or IP addresses for the server certificates")
	td := fs.String("trust-domain", "aisecops.local", "SPIFFE trust domain of the xDS client identities (as --xds-trust-domain)")
	envoyNode := fs.String("envoy-node-id", "egress-envoy", "xDS node id of Envoy (its bootstrap node.id)")
	replicaNode := fs.String("authz-node-id", "aisecops-authz", "xDS node id of the authz replicas (serve --node-id)")
	validFor := fs.Duration("valid-for", 365*24*time.Hour, "certificate lifetime")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return errors.New("dev-certs: --out is required")
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("dev-certs: %w", err)
	}
	now := time.Now()
	ca, created, err := loadOrCreateDevCA(*out, now, *validFor)
	if err != nil {
		return err
	}
	extra := splitList(*hosts)
	loopback := []string{"localhost", "127.0.0.1", "::1"}
	serverNames := func(names ...string) []string {
		all := slices.Concat(loopback, names, extra)
		slices.Sort(all)
		return slices.Compact(all)
	}
	leaves := []leafSpec{
		{name: devAuthzServer, cn: "aisecops ext_authz", server: true, hosts: serverNames(devServerNames[devAuthzServer]...)},
		{name: devXDSServer, cn: "aisecops xDS", server: true, hosts: serverNames(devServerNames[devXDSServer]...)},
		{name: devHTTPServer, cn: "aisecops HTTP API", server: true, hosts: serverNames(slices.Concat(devServerNames[devAuthzServer], devServerNames[devXDSServer])...)},
		{name: devEnvoyClient, cn: *envoyNode, uris: []string{xdsserver.NodeSPIFFEID(*td, *envoyNode)}},
		{name: devReplica, cn: *replicaNode, uris: []string{xdsserver.NodeSPIFFEID(*td, *replicaNode)}},
	}
	for _, l := range leaves {
		l.notBefore, l.notAfter = now.Add(-5*time.Minute), now.Add(*validFor)
		if err := ca.writeLeaf(*out, l); err != nil {
			return err
		}
	}
	if created {
		fmt.Fprintf(stdout, "created a DEVELOPMENT CA: %s\n", filepath.Join(*out, devCA+".crt"))
	} else {
		fmt.Fprintf(stdout, "reused the CA in %s\n", filepath.Join(*out, devCA+".crt"))
	}
	fmt.Fprintf(stdout, `wrote to %s:
  authz.crt/.key          --authz-tls-cert/--authz-tls-key   (--authz-client-ca ca.crt)
  xds.crt/.key            --xds-tls-cert/--xds-tls-key       (--xds-client-ca ca.crt)
  http.crt/.key           --http-tls-cert/--http-tls-key
  envoy.crt/.key          Envoy's client certificate (xDS node %q)
  authz-replica.crt/.key  --xds-client-cert/--xds-client-key (xDS node %q; --xds-server-ca ca.crt)
`, *out, *envoyNode, *replicaNode)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// devCAKey signs the development certificates.
type devCAKey struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// loadOrCreateDevCA reuses DIR/ca.crt and ca.key when both exist, so running
// dev-certs again reissues the leaves without breaking trust in the CA.
func loadOrCreateDevCA(dir string, now time.Time, validFor time.Duration) (*devCAKey, bool, error) {
	certPath, keyPath := filepath.Join(dir, devCA+".crt"), filepath.Join(dir, devCA+".key")
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil {
		ca, err := parseDevCA(certPEM, keyPEM)
		if err != nil {
			return nil, false, fmt.Errorf("dev-certs: existing CA in %s: %w", dir, err)
		}
		return ca, false, nil
	}
	if !errors.Is(cerr, os.ErrNotExist) || !errors.Is(kerr, os.ErrNotExist) {
		return nil, false, fmt.Errorf("dev-certs: %s and %s must both exist or both be absent", certPath, keyPath)
	}
	ca, err := newDevCA("aisecops development CA", now.Add(-5*time.Minute), now.Add(validFor))
	if err != nil {
		return nil, false, err
	}
	if err := writePEM(keyPath, "PRIVATE KEY", mustPKCS8(ca.key), 0o600); err != nil {
		return nil, false, err
	}
	if err := writePEM(certPath, "CERTIFICATE", ca.cert.Raw, 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

func newDevCA(cn string, notBefore, notAfter time.Time) (*devCAKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &devCAKey{cert: cert, key: key}, nil
}

func parseDevCA(certPEM, keyPEM []byte) (*devCAKey, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !cert.IsCA {
		return nil, errors.New("not an ECDSA CA")
	}
	return &devCAKey{cert: cert, key: key}, nil
}

// leafSpec is one certificate to issue: a server certificate for hosts, or a
// client certificate with a CN and URI SANs.
type leafSpec struct {
	name                string
	server              bool
	hosts               []string
	cn                  string
	uris                []string
	notBefore, notAfter time.Time
}

// issue signs a leaf certificate; it returns the certificate and key DER.
func (ca *devCAKey) issue(l leafSpec) (certDER []byte, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: l.cn},
		NotBefore: l.notBefore, NotAfter: l.notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if l.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range l.hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	for _, u := range l.uris {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, nil, fmt.Errorf("dev-certs: URI SAN %q: %w", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	return certDER, key, err
}

// writeLeaf issues l and writes DIR/<name>.crt and DIR/<name>.key (0600).
func (ca *devCAKey) writeLeaf(dir string, l leafSpec) error {
	der, key, err := ca.issue(l)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, l.name+".key"), "PRIVATE KEY", mustPKCS8(key), 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, l.name+".crt"), "CERTIFICATE", der, 0o644)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

func mustPKCS8(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // cannot fail for a P-256 key
	}
	return der
}

// writePEM writes one PEM block through a temporary file and a rename, so a
// listener re-reading the file never sees half of it.
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("dev-certs: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := pem.Encode(tmp, &pem.Block{Type: typ, Bytes: der}); err != nil {
		tmp.Close()
		return fmt.Errorf("dev-certs: %w", err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("dev-certs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("dev-certs: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("dev-certs: %w", err)
	}
	return nil
}
