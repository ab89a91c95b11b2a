package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// syncBuffer collects a running command's logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startCommand runs `aisecops <args>` in this process until the test ends
// and returns the addresses its listeners logged, by log message.
func startCommand(t *testing.T, want []string, args ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("command did not stop within 15 s")
		}
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		addrs := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Addr != "" {
				addrs[l.Msg] = l.Addr
			}
		}
		complete := true
		for _, w := range want {
			complete = complete && addrs[w] != ""
		}
		if complete {
			return addrs
		}
		select {
		case err := <-done:
			t.Fatalf("command exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("listeners %v not up within 30 s:\n%s", want, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pki is a development PKI written by `aisecops dev-certs`, plus the odd
// certificates the refusal tests need.
type pki struct {
	dir  string
	ca   *devCAKey
	pool *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	if err := runDevCerts([]string{"--out", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := parseDevCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return &pki{dir: dir, ca: ca, pool: pool}
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func (p *pki) keyPair(t *testing.T, name string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(p.path(name+".crt"), p.path(name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func issued(t *testing.T, ca *devCAKey, l leafSpec) tls.Certificate {
	t.Helper()
	der, key, err := ca.issue(l)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// clientCerts are the client certificates every mTLS listener is tried with:
// only "good" may get through.
func (p *pki) clientCerts(t *testing.T) map[string]*tls.Certificate {
	t.Helper()
	other, err := newDevCA("another CA", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	node := []string{"spiffe://aisecops.local/envoy/egress-envoy"}
	otherCA := issued(t, other, leafSpec{cn: "egress-envoy", uris: node, notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(time.Hour)})
	expired := issued(t, p.ca, leafSpec{cn: "egress-envoy", uris: node, notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	good := p.keyPair(t, "envoy")
	return map[string]*tls.Certificate{"no certificate": nil, "another CA": &otherCA, "expired": &expired, "good": &good}
}

func (p *pki) grpcConn(t *testing.T, addr string, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func tlsArgs(p *pki) []string {
	return []string{
		"--authz-tls-cert", p.path("authz.crt"), "--authz-tls-key", p.path("authz.key"), "--authz-client-ca", p.path("ca.crt"),
		"--xds-tls-cert", p.path("xds.crt"), "--xds-tls-key", p.path("xds.key"), "--xds-client-ca", p.path("ca.crt"),
		"--http-tls-cert", p.path("http.crt"), "--http-tls-key", p.path("http.key"),
	}
}

const (
	authzUp = "ext_authz gRPC listening"
	xdsUp   = "xDS control plane listening"
	httpUp  = "HTTP API listening"
)

// TestTLSListeners runs `aisecops all` with every TLS flag and holds each
// listener to its contract: ext_authz and xDS refuse a client without a
// certificate, with one from another CA or an expired one, and let a good
// one through; an xDS client naming a node its certificate does not is
// refused and leaves no node behind; a CheckRequest over the size limit is
// refused; the HTTP API speaks TLS only and picks up a rotated certificate
// without a restart.
func TestTLSListeners(t *testing.T) {
	p := newPKI(t)
	args := append([]string{"all", "--home", t.TempDir(), "--authz-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, tlsArgs(p)...)
	addrs := startCommand(t, []string{authzUp, xdsUp, httpUp}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for name, cert := range p.clientCerts(t) {
		t.Run("ext_authz/"+name, func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			defer ccancel()
			hr, err := healthpb.NewHealthClient(p.grpcConn(t, addrs[authzUp], cert)).Check(cctx, &healthpb.HealthCheckRequest{})
			if name == "good" {
				if err != nil {
					t.Fatalf("good client refused: %v", err)
				}
				t.Logf("health: %v", hr.GetStatus())
				return
			}
			if err == nil {
				t.Fatalf("%s: got through", name)
			}
			t.Logf("refused: %v", err)
		})
		t.Run("xds/"+name, func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			defer ccancel()
			_, err := adsListeners(cctx, p.grpcConn(t, addrs[xdsUp], cert), "egress-envoy")
			if name == "good" {
				if err != nil {
					t.Fatalf("good client refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%s: got through", name)
			}
			t.Logf("refused: %v", err)
		})
	}

	httpClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool}}}
	t.Run("xds/node id not the certificate's", func(t *testing.T) {
		envoy := p.keyPair(t, "envoy")
		_, err := adsListeners(ctx, p.grpcConn(t, addrs[xdsUp], &envoy), "aisecops-authz")
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
		st := getJSON[struct{ Nodes []struct{ ID string } }](t, httpClient, "https://"+addrs[httpUp]+"/v1/xds/status")
		for _, n := range st.Nodes {
			if n.ID == "aisecops-authz" {
				t.Fatal("the refused node id has state")
			}
		}
	})

	t.Run("ext_authz/message over the limit", func(t *testing.T) {
		envoy := p.keyPair(t, "envoy")
		client := envoy_service_auth_v3.NewAuthorizationClient(p.grpcConn(t, addrs[authzUp], &envoy))
		check := func(body int) error {
			_, err := client.Check(ctx, &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
				Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
					Id: fmt.Sprint(body), Method: "POST", Path: "/", Host: "db.internal", RawBody: make([]byte, body)}}}})
			return err
		}
		// The bundled routes file's max_request_bytes is 1 MiB: a body of that
		// size is decided (denied: no token), twice that never reaches the server.
		if err := check(1 << 20); err != nil {
			t.Fatalf("a Check of max_request_bytes refused: %v", err)
		}
		if err := check(2 << 20); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("2 MiB Check: %v, want ResourceExhausted", err)
		}
	})

	t.Run("http/TLS only", func(t *testing.T) {
		resp, err := httpClient.Get("https://" + addrs[httpUp] + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS == nil {
			t.Fatalf("status %d, tls %v", resp.StatusCode, resp.TLS != nil)
		}
		plain, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addrs[httpUp] + "/healthz")
		if err == nil {
			plain.Body.Close()
			if plain.StatusCode == http.StatusOK {
				t.Fatal("plaintext request served")
			}
		}
	})

	t.Run("http/certificate rotated without restart", func(t *testing.T) {
		served := func() string {
			conn, err := tls.Dial("tcp", addrs[httpUp], &tls.Config{RootCAs: p.pool})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
		}
		if got := served(); got != "aisecops HTTP API" {
			t.Fatalf("served %q", got)
		}
		if err := p.ca.writeLeaf(p.dir, leafSpec{name: devHTTPServer, cn: "rotated", server: true, hosts: []string{"127.0.0.1"},
			notBefore: time.Now().Add(-time.Minute), notAfter: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for served() != "rotated" {
			if time.Now().After(deadline) {
				t.Fatal("the rotated certificate was not served within 10 s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// adsListeners opens an ADS stream as node and waits for the listeners.
func adsListeners(ctx context.Context, cc *grpc.ClientConn, node string) (*envoy_service_discovery_v3.DiscoveryResponse, error) {
	st, err := envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&envoy_service_discovery_v3.DiscoveryRequest{Node: &envoy_config_core_v3.Node{Id: node}, TypeUrl: resource.ListenerType}); err != nil {
		return nil, err
	}
	return st.Recv()
}

func getJSON[T any](t *testing.T, c *http.Client, url string) T {
	t.Helper()
	var v T
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLoopbackRule: plaintext is for loopback. A listener off loopback
// without TLS refuses to start unless --insecure-listeners, which is then
// reported by /readyz.
func TestLoopbackRule(t *testing.T) {
	p := newPKI(t)
	tests := map[string]struct {
		args    []string
		wantErr string
		exposed int
	}{
		"defaults":              {nil, "", 0},
		"localhost":             {[]string{"--authz-addr", "localhost:9191", "--http-addr", "[::1]:8181"}, "", 0},
		"all interfaces":        {[]string{"--authz-addr", ":9191"}, "--insecure-listeners", 0},
		"unspecified address":   {[]string{"--xds-addr", "0.0.0.0:18000"}, "xDS 0.0.0.0:18000", 0},
		"host name":             {[]string{"--http-addr", "authz.internal:8181"}, "HTTP API authz.internal:8181", 0},
		"plaintext xds client":  {[]string{"--xds-server", "xds:18000"}, "xDS client to xds:18000", 0},
		"insecure allowed":      {[]string{"--authz-addr", ":9191", "--http-addr", ":8181", "--insecure-listeners"}, "", 2},
		"TLS everywhere":        {append([]string{"--authz-addr", ":9191", "--xds-addr", ":18000", "--http-addr", ":8181"}, tlsArgs(p)...), "", 0},
		"cert without key":      {[]string{"--authz-tls-cert", p.path("authz.crt")}, "--authz-tls-cert and --authz-tls-key go together", 0},
		"mTLS without a CA":     {[]string{"--xds-tls-cert", p.path("xds.crt"), "--xds-tls-key", p.path("xds.key")}, "--xds-tls-cert needs --xds-client-ca", 0},
		"client cert, no CA":    {[]string{"--xds-server", "xds:18000", "--xds-client-cert", "c", "--xds-client-key", "k"}, "--xds-client-cert needs --xds-server-ca", 0},
		"TLS to the xds server": {[]string{"--xds-server", "xds:18000", "--xds-server-ca", p.path("ca.crt")}, "", 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			fs, o := commonFlags("all", io.Discard)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := o.checkListeners(true, true, slog.New(slog.DiscardHandler))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
			}
			if len(o.listen.exposed) != tc.exposed && tc.wantErr == "" {
				t.Fatalf("exposed %v, want %d", o.listen.exposed, tc.exposed)
			}
		})
	}

	t.Run("refuses to start", func(t *testing.T) {
		err := run(context.Background(), []string{"serve", "--home", t.TempDir(), "--authz-addr", "0.0.0.0:0"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--insecure-listeners") {
			t.Fatalf("started, or failed for another reason: %v", err)
		}
	})
	t.Run("readyz reports insecure listeners", func(t *testing.T) {
		addrs := startCommand(t, []string{httpUp}, "xds", "--home", t.TempDir(), "--insecure-listeners", "--xds-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0")
		r := getJSON[struct {
			Ready    bool
			Warnings map[string]string
		}](t, http.DefaultClient, "http://"+addrs[httpUp]+"/readyz")
		if !strings.Contains(r.Warnings["insecure_listeners"], "xDS 0.0.0.0:0") {
			t.Fatalf("readyz %+v", r)
		}
	})
}

// TestHTTPLimits: a body trickled in, a silent connection and an idle
// keep-alive connection are each closed within their timeout, and
// connections beyond the cap wait.
func TestHTTPLimits(t *testing.T) {
	t.Parallel()
	fs, o := commonFlags("serve", io.Discard)
	if err := fs.Parse([]string{"--http-read-header-timeout", "300ms", "--http-read-timeout", "700ms", "--http-idle-timeout", "500ms", "--http-max-conns", "2"}); err != nil {
		t.Fatal(err)
	}
	srv, err := o.httpServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, "body", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok\n")
	}), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	l, err := listenTCP("127.0.0.1:0", o.listen.httpMaxConns)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	addr := l.Addr().String()

	// closedWithin reads from c until the server closes it.
	closedWithin := func(t *testing.T, c net.Conn, limit time.Duration) {
		t.Helper()
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(limit + 2*time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v (limit %v)", time.Since(start), limit)
		}
		if took := time.Since(start); took > limit+time.Second {
			t.Fatalf("closed after %v, limit %v", took, limit)
		}
	}
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("trickled body", func(t *testing.T) {
		c := dial(t)
		if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		go func() {
			for range 100 {
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
		closedWithin(t, c, 700*time.Millisecond)
	})
	t.Run("silent connection", func(t *testing.T) {
		closedWithin(t, dial(t), 300*time.Millisecond)
	})
	t.Run("idle keep-alive connection", func(t *testing.T) {
		c := dial(t)
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%v %v", resp, err)
		}
		resp.Body.Close()
		closedWithin(t, c, 500*time.Millisecond)
	})
	t.Run("headers over the limit", func(t *testing.T) {
		c := dial(t)
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 128<<10))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("%v %v", resp, err)
		}
	})
}

// TestHTTPConnectionCap: beyond --http-max-conns a connection is not served
// until another closes.
func TestHTTPConnectionCap(t *testing.T) {
	t.Parallel()
	fs, o := commonFlags("serve", io.Discard)
	if err := fs.Parse([]string{"--http-read-header-timeout", "10s", "--http-max-conns", "2"}); err != nil {
		t.Fatal(err)
	}
	srv, err := o.httpServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	l, err := listenTCP("127.0.0.1:0", o.listen.httpMaxConns)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond) // both accepted
	client := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := client.Get("http://" + l.Addr().String() + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("a third connection was served while two were held")
	}
	held[0].Close()
	client.Timeout = 5 * time.Second
	resp, err := client.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatalf("not served once a connection closed: %v", err)
	}
	resp.Body.Close()
	held[1].Close()
}
