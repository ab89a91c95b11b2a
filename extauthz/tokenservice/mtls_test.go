package tokenservice

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// testCA issues client certificates for the mTLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) client(t *testing.T, cn string, uris ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestClientCertificate runs the service behind a real TLS listener that
// verifies client certificates against a test CA.
func TestClientCertificate(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	tests := []struct {
		name      string
		cert      func() tls.Certificate
		verify    bool // the server verifies client certificates
		bearer    bool
		status    int
		wantAgent string
	}{
		{name: "SPIFFE ID", cert: func() tls.Certificate { return ca.client(t, "ignored", "spiffe://example.org/agent/reader") }, verify: true, status: http.StatusCreated, wantAgent: "reader"},
		{name: "CN without SPIFFE ID", cert: func() tls.Certificate { return ca.client(t, "reader") }, verify: true, status: http.StatusCreated, wantAgent: "reader"},
		{name: "SPIFFE ID of another trust domain", cert: func() tls.Certificate { return ca.client(t, "reader", "spiffe://evil.example/agent/reader") }, verify: true, status: http.StatusUnauthorized},
		{name: "SPIFFE ID that names no agent", cert: func() tls.Certificate { return ca.client(t, "reader", "spiffe://example.org/ns/x/reader") }, verify: true, status: http.StatusUnauthorized},
		{name: "SPIFFE ID with a nested path", cert: func() tls.Certificate { return ca.client(t, "reader", "spiffe://example.org/agent/reader/x") }, verify: true, status: http.StatusUnauthorized},
		{name: "presented but not verified by the server", cert: func() tls.Certificate { return ca.client(t, "reader") }, verify: false, status: http.StatusUnauthorized},
		{name: "bad bearer is not rescued by the certificate", cert: func() tls.Certificate { return ca.client(t, "reader") }, verify: true, bearer: true, status: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(c *Config) { c.ClientCert = &ClientCertConfig{TrustDomain: "example.org"} })
			srv := httptest.NewUnstartedServer(f.handler)
			srv.TLS = &tls.Config{ClientCAs: ca.pool, ClientAuth: tls.VerifyClientCertIfGiven}
			if !tc.verify {
				srv.TLS.ClientAuth = tls.RequestClientCert
			}
			srv.StartTLS()
			defer srv.Close()
			client := srv.Client()
			cert := tc.cert()
			client.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}

			req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/tokens", strings.NewReader(`{"tool":"db.read"}`))
			if err != nil {
				t.Fatal(err)
			}
			if tc.bearer {
				req.Header.Set("Authorization", "Bearer not-a-jwt")
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status == http.StatusCreated {
				var got Issued
				if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
					t.Fatal(err)
				}
				if got.AgentID != tc.wantAgent {
					t.Errorf("agent %q, want %q", got.AgentID, tc.wantAgent)
				}
				recs := f.records(t)
				if len(recs) != 1 || recs[0].AgentID != tc.wantAgent {
					t.Errorf("audit %+v", recs)
				}
			}
		})
	}
}
