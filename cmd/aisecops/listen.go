package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Default listen addresses: loopback, so that the embedded default (plaintext,
// no flags) is reachable from this machine only. Listening anywhere else
// takes TLS flags, or --insecure-listeners.
const (
	defaultAuthzAddr = "127.0.0.1:9191"
	defaultHTTPAddr  = "127.0.0.1:8181"
	defaultXDSAddr   = "127.0.0.1:18000"
)

// authzRecvHeadroom is what a CheckRequest carries besides the body Envoy
// buffers (max_request_bytes): headers (Envoy's default limit is 60 KiB),
// attributes, context extensions.
const authzRecvHeadroom = 256 << 10

// tlsFiles are one listener's TLS flags.
type tlsFiles struct{ cert, key, clientCA string }

func (t tlsFiles) on() bool { return t.cert != "" || t.key != "" || t.clientCA != "" }

// listenOptions are the flags of the three listeners (TLS, the loopback rule,
// limits) and of the authz replica's xDS client.
type listenOptions struct {
	authzTLS, xdsTLS, httpTLS tlsFiles
	insecure                  bool
	xdsTrustDomain            string

	xdsClientCert, xdsClientKey, xdsServerCA string

	httpReadHeaderTimeout, httpReadTimeout, httpWriteTimeout, httpIdleTimeout time.Duration
	httpMaxHeaderBytes, httpMaxConns                                          int

	grpcMaxStreams                                    uint
	grpcMaxConns                                      int
	grpcConnTimeout                                   time.Duration
	keepaliveTime, keepaliveTimeout, keepaliveMinTime time.Duration
	authzMaxRecv, xdsMaxRecv                          int

	xdsNodeTTL  time.Duration
	xdsMaxNodes int

	// exposed lists the plaintext listeners off loopback that
	// --insecure-listeners let start; /readyz reports them.
	exposed []string
}

func addListenFlags(fs *flag.FlagSet, l *listenOptions) {
	fs.StringVar(&l.authzTLS.cert, "authz-tls-cert", "", "ext_authz gRPC server certificate (PEM; re-read when it changes)")
	fs.StringVar(&l.authzTLS.key, "authz-tls-key", "", "ext_authz gRPC server key (PEM)")
	fs.StringVar(&l.authzTLS.clientCA, "authz-client-ca", "", "CA of the client certificates ext_authz requires (Envoy's); required with --authz-tls-cert")
	fs.StringVar(&l.xdsTLS.cert, "xds-tls-cert", "", "xDS server certificate (PEM; re-read when it changes)")
	fs.StringVar(&l.xdsTLS.key, "xds-tls-key", "", "xDS server key (PEM)")
	fs.StringVar(&l.xdsTLS.clientCA, "xds-client-ca", "", "CA of the client certificates xDS requires; required with --xds-tls-cert")
	fs.StringVar(&l.xdsTrustDomain, "xds-trust-domain", "aisecops.local", "with xDS mTLS, a node id must be named by its client certificate as the URI SAN spiffe://<this>/envoy/<node-id>")
	fs.StringVar(&l.httpTLS.cert, "http-tls-cert", "", "HTTP API server certificate (PEM; re-read when it changes)")
	fs.StringVar(&l.httpTLS.key, "http-tls-key", "", "HTTP API server key (PEM)")
	fs.StringVar(&l.httpTLS.clientCA, "http-client-ca", "", "CA of client certificates the HTTP API verifies when a client presents one (optional)")
	fs.BoolVar(&l.insecure, "insecure-listeners", false, "allow plaintext listeners on non-loopback addresses (and plaintext to a non-loopback --xds-server); logged and shown by /readyz")
	fs.StringVar(&l.xdsClientCert, "xds-client-cert", "", "client certificate for --xds-server (its URI SAN names --node-id)")
	fs.StringVar(&l.xdsClientKey, "xds-client-key", "", "client key for --xds-server")
	fs.StringVar(&l.xdsServerCA, "xds-server-ca", "", "CA of the --xds-server certificate; turns on TLS to the control plane")

	fs.DurationVar(&l.httpReadHeaderTimeout, "http-read-header-timeout", 5*time.Second, "HTTP API: time to read a request's headers (and the TLS handshake)")
	fs.DurationVar(&l.httpReadTimeout, "http-read-timeout", 30*time.Second, "HTTP API: time to read a whole request, body included")
	fs.DurationVar(&l.httpWriteTimeout, "http-write-timeout", 60*time.Second, "HTTP API: time to write a response")
	fs.DurationVar(&l.httpIdleTimeout, "http-idle-timeout", 2*time.Minute, "HTTP API: how long an idle keep-alive connection stays open")
	fs.IntVar(&l.httpMaxHeaderBytes, "http-max-header-bytes", 64<<10, "HTTP API: largest request header block")
	fs.IntVar(&l.httpMaxConns, "http-max-conns", 1024, "HTTP API: most connections open at once (more wait to be accepted)")

	fs.UintVar(&l.grpcMaxStreams, "grpc-max-streams", 1024, "gRPC (ext_authz, xDS): most concurrent streams per connection")
	fs.IntVar(&l.grpcMaxConns, "grpc-max-conns", 1024, "gRPC (ext_authz, xDS): most connections open at once per listener")
	fs.DurationVar(&l.grpcConnTimeout, "grpc-connection-timeout", 10*time.Second, "gRPC: time for a new connection's handshake")
	fs.DurationVar(&l.keepaliveTime, "grpc-keepalive-time", time.Minute, "gRPC: ping a connection idle this long")
	fs.DurationVar(&l.keepaliveTimeout, "grpc-keepalive-timeout", 20*time.Second, "gRPC: close a connection whose ping is unanswered this long")
	fs.DurationVar(&l.keepaliveMinTime, "grpc-keepalive-min-time", 10*time.Second, "gRPC: clients pinging more often than this are disconnected")
	fs.IntVar(&l.authzMaxRecv, "authz-max-recv-bytes", 0, "largest CheckRequest accepted (0: the routes file's authz.max_request_bytes + 256 KiB)")
	fs.IntVar(&l.xdsMaxRecv, "xds-max-recv-bytes", 1<<20, "largest xDS request accepted")
	fs.DurationVar(&l.xdsNodeTTL, "xds-node-ttl", 15*time.Minute, "xDS: forget a node with no open stream after this long")
	fs.IntVar(&l.xdsMaxNodes, "xds-max-nodes", 4096, "xDS: most nodes remembered")
}

// isLoopback says whether a listen address binds loopback only. An empty host
// or an unspecified address binds every interface.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// checkListeners validates the TLS flags of the listeners a command opens
// and enforces the loopback rule: a plaintext listener (or plaintext to the
// control plane) off loopback is refused unless --insecure-listeners, and
// then logged loudly and kept for /readyz.
func (o *options) checkListeners(authz, xdsPlane bool, log *slog.Logger) error {
	l := &o.listen
	var errs []error
	type use struct {
		name, addr string
		tls        tlsFiles
		mtls       bool
		prefix     string
	}
	uses := []use{{"HTTP API", o.httpAddr, l.httpTLS, false, "http"}}
	if authz {
		uses = append(uses, use{"ext_authz gRPC", o.authzAddr, l.authzTLS, true, "authz"})
	}
	if xdsPlane {
		uses = append(uses, use{"xDS", o.xdsAddr, l.xdsTLS, true, "xds"})
	}
	l.exposed = nil
	for _, u := range uses {
		t := u.tls
		if (t.cert == "") != (t.key == "") {
			errs = append(errs, fmt.Errorf("--%s-tls-cert and --%s-tls-key go together", u.prefix, u.prefix))
		}
		if t.clientCA != "" && t.cert == "" {
			errs = append(errs, fmt.Errorf("--%s-client-ca needs --%s-tls-cert", u.prefix, u.prefix))
		}
		if u.mtls && t.cert != "" && t.clientCA == "" {
			errs = append(errs, fmt.Errorf("--%s-tls-cert needs --%s-client-ca: %s requires client certificates", u.prefix, u.prefix, u.name))
		}
		if !t.on() && !isLoopback(u.addr) {
			l.exposed = append(l.exposed, u.name+" "+u.addr)
		}
	}
	if authz && o.xdsServer != "" {
		if (l.xdsClientCert == "") != (l.xdsClientKey == "") {
			errs = append(errs, errors.New("--xds-client-cert and --xds-client-key go together"))
		}
		if l.xdsClientCert != "" && l.xdsServerCA == "" {
			errs = append(errs, errors.New("--xds-client-cert needs --xds-server-ca"))
		}
		if l.xdsServerCA == "" && !isLoopback(o.xdsServer) {
			l.exposed = append(l.exposed, "xDS client to "+o.xdsServer)
		}
	}
	if xdsPlane && l.xdsTLS.cert != "" && l.xdsTrustDomain == "" {
		errs = append(errs, errors.New("--xds-trust-domain is required with --xds-tls-cert (node ids are bound to certificates)"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(l.exposed) > 0 {
		if !l.insecure {
			return fmt.Errorf("plaintext off loopback: %s; give each its TLS flags (--authz-tls-cert/--authz-tls-key/--authz-client-ca, --xds-tls-cert/…, --http-tls-cert/…, --xds-server-ca), listen on 127.0.0.1, or pass --insecure-listeners", strings.Join(l.exposed, ", "))
		}
		for _, e := range l.exposed {
			log.Error("INSECURE: plaintext off loopback (--insecure-listeners): anyone who can reach it can use it without credentials", "listener", e)
		}
	}
	return nil
}

// listenWarnings is what /readyz reports beside readiness.
func (o *options) listenWarnings() map[string]string {
	if len(o.listen.exposed) == 0 {
		return nil
	}
	return map[string]string{"insecure_listeners": strings.Join(o.listen.exposed, ", ") + ": plaintext off loopback (--insecure-listeners)"}
}

// listenTCP listens on addr, accepting at most maxConns connections at once.
func listenTCP(addr string, maxConns int) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if maxConns > 0 {
		l = netutil.LimitListener(l, maxConns)
	}
	return l, nil
}

// grpcServer builds a gRPC server with the listener's credentials (mTLS
// when its TLS flags are set) and the limits.
func (o *options) grpcServer(name string, t tlsFiles, maxRecv int, log *slog.Logger) (*grpc.Server, error) {
	l := &o.listen
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxRecv),
		grpc.MaxConcurrentStreams(uint32(min(l.grpcMaxStreams, 1<<31))),
		grpc.ConnectionTimeout(l.grpcConnTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: l.keepaliveTime, Timeout: l.keepaliveTimeout}),
		// Envoy and gRPC clients may ping idle connections, no more often than MinTime.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.keepaliveMinTime, PermitWithoutStream: true}),
		// Long-lived stream workers keep their grown stacks: a goroutine per
		// Check was spending 4% of the CPU under load growing its stack. When
		// every worker is busy gRPC starts a goroutine as before.
		grpc.NumStreamWorkers(uint32(16 * runtime.GOMAXPROCS(0))),
	}
	if t.cert != "" {
		cfg, err := serverTLS(name, t.cert, t.key, t.clientCA, tls.RequireAndVerifyClientCert, nil, log)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
		log.Info(name+": mTLS", "cert", t.cert, "client_ca", t.clientCA)
	}
	return grpc.NewServer(opts...), nil
}

// authzGRPCServer is the ext_authz server: the largest message it takes is
// the routes file's max_request_bytes plus headroom, read at start (a later
// file raising it needs a restart or --authz-max-recv-bytes).
func (o *options) authzGRPCServer(log *slog.Logger) (*grpc.Server, error) {
	maxRecv := o.listen.authzMaxRecv
	if maxRecv <= 0 {
		f, _, err := loadConfig(o.config)
		if err != nil {
			return nil, err
		}
		maxRecv = int(f.Authz.MaxRequestBytes) + authzRecvHeadroom
	}
	log.Info("ext_authz gRPC: largest CheckRequest", "bytes", maxRecv)
	return o.grpcServer("ext_authz gRPC", o.listen.authzTLS, maxRecv, log)
}

func (o *options) xdsGRPCServer(log *slog.Logger) (*grpc.Server, error) {
	return o.grpcServer("xDS", o.listen.xdsTLS, o.listen.xdsMaxRecv, log)
}

// xdsTrustDomain is the trust domain node ids are bound in: only with mTLS on
// the xDS listener (plaintext is loopback-only development).
func (o *options) xdsTrustDomain() string {
	if o.listen.xdsTLS.cert == "" {
		return ""
	}
	return o.listen.xdsTrustDomain
}

// xdsDialOption is how an authz replica reaches --xds-server: TLS with its
// client certificate when --xds-server-ca is set, else plaintext (which
// checkListeners allows on loopback only).
func (o *options) xdsDialOption(log *slog.Logger) (grpc.DialOption, error) {
	l := &o.listen
	if l.xdsServerCA == "" {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	cfg, err := clientTLS("xDS", l.xdsClientCert, l.xdsClientKey, l.xdsServerCA, log)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// httpServer is the HTTP API's server with its timeouts and limits, and TLS
// when its flags are set. A client certificate is optional there (probes and
// browsers have none) but verified when presented.
func (o *options) httpServer(h http.Handler, log *slog.Logger) (*http.Server, error) {
	l := &o.listen
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.httpReadHeaderTimeout,
		ReadTimeout:       l.httpReadTimeout,
		WriteTimeout:      l.httpWriteTimeout,
		IdleTimeout:       l.httpIdleTimeout,
		MaxHeaderBytes:    l.httpMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if l.httpTLS.cert != "" {
		cfg, err := serverTLS("HTTP API", l.httpTLS.cert, l.httpTLS.key, l.httpTLS.clientCA, tls.VerifyClientCertIfGiven, []string{"h2", "http/1.1"}, log)
		if err != nil {
			return nil, err
		}
		srv.TLSConfig = cfg
		log.Info("HTTP API: TLS", "cert", l.httpTLS.cert, "client_ca", l.httpTLS.clientCA)
	}
	return srv, nil
}
