package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestDevCerts: every certificate chains to the CA for its use (server or
// client), carries the names the deploy files dial or the node id it speaks
// as, and a second run reuses the CA.
func TestDevCerts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := runDevCerts([]string{"--out", dir, "--hosts", "authz.example.test,10.9.8.7"}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	leaf := func(name string) *x509.Certificate {
		t.Helper()
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(dir, name+".key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s.key mode %v", name, fi.Mode())
		}
		return kp.Leaf
	}
	servers := map[string][]string{
		"authz": {"authz", "aisecops-authz-headless.aisecops.svc.cluster.local", "localhost", "authz.example.test", "127.0.0.1", "10.9.8.7"},
		"xds":   {"xds", "aisecops-xds.aisecops.svc.cluster.local", "localhost", "authz.example.test"},
		"http":  {"authz", "xds", "localhost"},
	}
	for name, hosts := range servers {
		c := leaf(name)
		for _, h := range hosts {
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: h, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("%s for %s: %v", name, h, err)
			}
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			t.Errorf("server certificate %s usable as a client certificate", name)
		}
	}
	clients := map[string]string{"envoy": "spiffe://aisecops.local/envoy/egress-envoy", "authz-replica": "spiffe://aisecops.local/envoy/aisecops-authz"}
	for name, uri := range clients {
		c := leaf(name)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if len(c.URIs) != 1 || c.URIs[0].String() != uri {
			t.Errorf("%s URIs %v, want %s", name, c.URIs, uri)
		}
		if slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
			t.Errorf("client certificate %s usable as a server certificate", name)
		}
	}
	if err := runDevCerts([]string{"--out", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	again, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil || !bytes.Equal(again, caPEM) {
		t.Fatalf("second run replaced the CA (%v)", err)
	}
	if err := runDevCerts(nil, io.Discard, io.Discard); err == nil {
		t.Fatal("no --out accepted")
	}
}
