package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/aisecops/aisecops-envoy/extauthz/revocation"
	"github.com/aisecops/aisecops-envoy/extauthz/tokenservice"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/evidence"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi/dashboard"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/runs"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// runServe runs the authz service, the control plane, or both.
func runServe(ctx context.Context, args []string, stderr io.Writer, authz, xdsPlane bool) error {
	name := map[[2]bool]string{{true, true}: "all", {true, false}: "serve", {false, true}: "xds"}[[2]bool{authz, xdsPlane}]
	fs, o := commonFlags(name, stderr)
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	if err := o.checkListeners(authz, xdsPlane, log); err != nil {
		return err
	}
	tuneGC(log)
	if err := os.MkdirAll(o.home, 0o700); err != nil {
		return fmt.Errorf("home %s: %w", o.home, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	start := func(name string, f func() error) {
		wg.Go(func() {
			if err := f(); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}

	if err := servePprof(ctx, o.pprofAddr, log, start); err != nil {
		return err
	}
	auth, err := apiAuth(ctx, o, log, start)
	if err != nil {
		return err
	}
	var extra []httpapi.Route
	if xdsPlane {
		if extra, err = startXDS(ctx, o, log, reg, start); err != nil {
			return err
		}
	}
	if authz {
		if err := startAuthz(ctx, o, log, reg, start, auth, extra); err != nil {
			return err
		}
	} else {
		// The control plane alone still serves health, metrics and its status.
		api := httpapi.Handler(httpapi.Config{Gatherer: reg, Auth: auth, Logger: log, Routes: extra, Warnings: o.listenWarnings()})
		if err := serveHTTP(ctx, o, api, log, start, nil); err != nil {
			return err
		}
	}
	log.Info("aisecops started", "command", name, "home", o.home)
	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error("stopping on error", "err", err)
	}
	cancel()
	wg.Wait()
	log.Info("aisecops stopped")
	return err
}

// authz is the decision path and everything around it, built from the
// flags: what startAuthz serves.
type authz struct {
	dir        *extauthz.Directory
	engine     *policy.Engine
	signer     capability.Signer
	store      runStore
	closeStore func()
	audit      *audit.Log
	sealer     *audit.Sealer
	revs       *revocation.Set
	tokens     *tokenservice.Service
	srv        *extauthz.Server
	ready      map[string]httpapi.ReadyFunc
	warnings   map[string]string
	inspector  *extauthz.EgressInspector
	evidence   evidence.Source
	events     *auditEvents
}

// startAuthz builds the decision path, then serves it.
func startAuthz(ctx context.Context, o *options, log *slog.Logger, reg *prometheus.Registry, start func(string, func() error), auth *httpapi.Auth, extra []httpapi.Route) error {
	a, err := buildAuthz(ctx, o, log, reg, start)
	if err != nil {
		return err
	}
	return a.serve(ctx, o, log, reg, start, auth, extra)
}

// buildAuthz wires the decision path: configuration, policy, keys, store,
// inspection, audit, revocations, the token service and the Check server.
// The watchers it needs run under start.
func buildAuthz(ctx context.Context, o *options, log *slog.Logger, reg *prometheus.Registry, start func(string, func() error)) (*authz, error) {
	a := &authz{}
	file, raw, err := loadConfig(o.config)
	if err != nil {
		return nil, err
	}
	a.dir = extauthz.NewDirectory(file, contentVersion(raw))
	if o.config != "" && o.xdsServer == "" {
		start("config-watch", func() error { watchConfig(ctx, o.config, a.dir, log); return nil })
	}
	if o.xdsServer != "" {
		start("agentsync", func() error { return subscribeAgents(ctx, o, a.dir, log) })
	}

	a.engine, err = policy.New(ctx, policy.Options{Dir: o.policies, Logger: log, Registerer: reg})
	if a.engine == nil {
		return nil, err
	}
	if err != nil {
		log.Error("policy bundle not loaded: not ready, every Check is denied until a good bundle appears", "err", err)
	}
	if o.policies != "" {
		start("policy-watch", func() error { a.engine.Watch(ctx, 2*time.Second); return nil })
	}

	if a.signer, err = loadSigner(o, log); err != nil {
		return nil, err
	}
	keys, err := verificationKeys(ctx, o, a.signer, log, start)
	if err != nil {
		return nil, err
	}
	verifier, err := capability.NewVerifier(capability.VerifierConfig{
		Issuer: o.tokenIssuer, Audience: o.tokenAudience, Keys: keys, MaxLifetime: o.maxTokenTTL,
		AcceptedPolicyVersions: a.engine.AcceptedPolicyVersions(),
	})
	if err != nil {
		return nil, err
	}

	var ping httpapi.ReadyFunc
	var warning string
	if a.store, ping, a.closeStore, warning, err = newStore(ctx, o, log); err != nil {
		return nil, err
	}
	if warning != "" {
		a.warnings = map[string]string{"store": warning}
	}
	findingKey, err := loadOrCreateSecret(filepath.Join(o.home, "finding-key"))
	if err != nil {
		return nil, err
	}
	if a.inspector, err = extauthz.NewEgressInspector([]byte(findingKey)); err != nil {
		return nil, err
	}
	if a.audit, err = audit.Open(o.auditPath(), audit.Options{Fsync: o.auditFsync, SealEvery: o.auditSealEvery}); err != nil {
		return nil, err
	}
	log.Info("audit log", "path", o.auditPath())
	if a.sealer, err = audit.NewSealer(o.sealKeysDir()); err != nil {
		return nil, err
	}
	log.Info("audit seal keys", "dir", o.sealKeysDir(), "active", a.sealer.ActiveKeyID())
	if a.evidence, err = evidenceSource(o.auditPath()); err != nil {
		return nil, err
	}
	a.events = &auditEvents{sink: a.audit, redact: a.inspector.Redact, now: time.Now, log: log}
	a.engine.OnChange(a.events.policyChanged)
	a.dir.OnChange(a.events.routesChanged)
	a.revs, err = revocation.New(revocation.Options{Path: o.revocationsFile, MaxTokenLifetime: o.maxTokenTTL, Logger: log})
	if err != nil {
		return nil, err
	}
	if o.revocationsFile != "" {
		start("revocations-watch", func() error {
			return ignoreCanceled(a.revs.Watch(ctx, 2*time.Second, func(err error) { log.Error("revocation file reload failed", "err", err) }))
		})
	}
	if a.tokens, err = newTokenService(ctx, o, a, log, reg, start); err != nil {
		return nil, err
	}
	tracer, shutdown, err := newTracer(ctx, log)
	if err != nil {
		return nil, err
	}
	start("otel", func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return shutdown(sctx)
	})
	a.srv, err = extauthz.New(extauthz.Config{
		Tracer:      tracer,
		Revocations: a.revs,
		Directory:   a.dir, Store: a.store, Approvals: a.store, Nonces: a.store, Inspector: a.inspector, StepLog: a.store,
		Verifier: verifier, Policy: a.engine, Audit: a.audit, Sealer: a.sealer,
		Logger: log, Registerer: reg, CheckTimeout: o.checkTimeout,
	})
	if err != nil {
		return nil, err
	}
	a.ready = map[string]httpapi.ReadyFunc{
		"policy": func(context.Context) error {
			if !a.engine.Ready() {
				return errors.New("policy bundle not loaded")
			}
			return nil
		},
		"store": ping,
	}
	return a, nil
}

// evidenceSource is the audit log GET /v1/evidence exports, with the log's
// own keys: the chain key to verify it, the checkpoint key to sign the export.
func evidenceSource(path string) (evidence.Source, error) {
	chain, signing := audit.DefaultKeyFiles(path)
	keys, err := audit.LoadVerifyKeys(chain, signing)
	if err != nil {
		return evidence.Source{}, err
	}
	signer, err := audit.LoadSigningKey(signing)
	if err != nil {
		return evidence.Source{}, err
	}
	return evidence.Source{Path: path, Keys: keys, Signer: signer}, nil
}

// loadSigner is the --signing-key, or else the development key in
// $AISECOPS_HOME (created on first use, and said so).
func loadSigner(o *options, log *slog.Logger) (capability.Signer, error) {
	if o.signingKey != "" {
		signer, err := capability.LoadSignerFile(o.signingKey)
		if err != nil {
			return nil, err
		}
		log.Info("token signing key", "path", o.signingKey, "kid", signer.KeyID())
		return signer, nil
	}
	signer, created, err := capability.LoadOrCreateDevKey(o.devKeyPath())
	if err != nil {
		return nil, err
	}
	if created {
		log.Warn("created a DEVELOPMENT signing key; use --signing-key or --jwks-file/--jwks-url in production", "path", o.devKeyPath(), "kid", signer.KeyID())
	} else {
		log.Warn("using the DEVELOPMENT signing key; use --signing-key in production", "path", o.devKeyPath(), "kid", signer.KeyID())
	}
	return signer, nil
}

// serve starts the ext_authz gRPC listener (with health and reflection) and
// the HTTP API.
func (a *authz) serve(ctx context.Context, o *options, log *slog.Logger, reg prometheus.Gatherer, start func(string, func() error), auth *httpapi.Auth, extra []httpapi.Route) error {
	gs, err := o.authzGRPCServer(log)
	if err != nil {
		return err
	}
	envoy_service_auth_v3.RegisterAuthorizationServer(gs, a.srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs) // so grpcurl works without proto files
	start("health", func() error { trackHealth(ctx, hs, a.ready); return nil })
	if err := serveGRPC(ctx, "ext_authz gRPC", o.authzAddr, o.listen.grpcMaxConns, gs, log, start, hs.Shutdown); err != nil {
		return err
	}
	listRevocations, revoke := a.revs.Handlers(a.events.revocation)
	dash, err := newDashboard(ctx, o, a, auth, log, start)
	if err != nil {
		return err
	}
	extra = append(extra, dash.Routes()...)
	api := httpapi.Handler(httpapi.Config{
		Explainer: a.srv, Approvals: a.store, OnDecision: a.events.approval, Gatherer: reg, Ready: a.ready, Warnings: mergeWarnings(a.warnings, o.listenWarnings()), Auth: auth, Logger: log,
		Routes: append([]httpapi.Route{
			{Pattern: "POST /v1/tokens", SelfAuth: true, Handler: a.tokens.Handler()},               // authenticates agents itself
			{Pattern: "GET /.well-known/jwks.json", SelfAuth: true, Handler: jwksHandler(a.signer)}, // public keys
			{Pattern: "GET /v1/revocations", Role: httpapi.RoleOperator, Handler: listRevocations},
			{Pattern: "POST /v1/revocations", Role: httpapi.RoleAdmin, Handler: revoke},
			{Pattern: "POST /v1/replay/diff", Role: httpapi.RoleOperator, Handler: httpapi.ReplayHandler(httpapi.ReplayConfig{
				Records: func(from, to time.Time, limit int) ([]audit.Record, error) {
					return audit.ReadRange(o.auditPath(), from, to, limit)
				},
				Opener: a.sealer,
				Directory: func(raw []byte) (*extauthz.Directory, error) {
					f, err := config.Parse("candidate routes file", raw)
					if err != nil {
						return nil, err
					}
					return extauthz.NewDirectory(f, contentVersion(raw)), nil
				},
			})},
		}, slices.Concat(runs.Routes(a.store), evidence.Routes(a.evidence), extra)...),
	})
	dash.SetAPI(api)
	return serveHTTP(ctx, o, dashboard.Secure(api), log, start, func() { a.audit.Close(); a.closeStore() })
}

// serveGRPC listens on addr (at most maxConns connections at once) and serves
// gs until ctx ends, then stops it gracefully (at most 10s; beforeStop runs
// first).
func serveGRPC(ctx context.Context, name, addr string, maxConns int, gs *grpc.Server, log *slog.Logger, start func(string, func() error), beforeStop func()) error {
	lis, err := listenTCP(addr, maxConns)
	if err != nil {
		return fmt.Errorf("%s listen: %w", name, err)
	}
	log.Info(name+" listening", "addr", lis.Addr().String())
	start(name, func() error {
		go func() {
			<-ctx.Done()
			if beforeStop != nil {
				beforeStop()
			}
			stopped := make(chan struct{})
			go func() { gs.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				gs.Stop()
			}
		}()
		return gs.Serve(lis)
	})
	return nil
}

// serveHTTP serves h on --http-addr with the HTTP API's TLS and limits
// (listen.go) until ctx ends.
func serveHTTP(ctx context.Context, o *options, h http.Handler, log *slog.Logger, start func(string, func() error), onStop func()) error {
	hsrv, err := o.httpServer(h, log)
	if err != nil {
		return err
	}
	hl, err := listenTCP(o.httpAddr, o.listen.httpMaxConns)
	if err != nil {
		return fmt.Errorf("http listen: %w", err)
	}
	log.Info("HTTP API listening", "addr", hl.Addr().String(), "tls", hsrv.TLSConfig != nil)
	start("http", func() error {
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = hsrv.Shutdown(sctx)
			if onStop != nil {
				onStop()
			}
		}()
		serve := hsrv.Serve
		if hsrv.TLSConfig != nil {
			serve = func(l net.Listener) error { return hsrv.ServeTLS(l, "", "") }
		}
		if err := serve(hl); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// trackHealth keeps the gRPC health service in step with readiness.
func trackHealth(ctx context.Context, hs *health.Server, ready map[string]httpapi.ReadyFunc) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		status := healthpb.HealthCheckResponse_SERVING
		for _, f := range ready {
			cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			err := f(cctx)
			cancel()
			if err != nil {
				status = healthpb.HealthCheckResponse_NOT_SERVING
			}
		}
		hs.SetServingStatus("", status)
		hs.SetServingStatus(envoy_service_auth_v3.Authorization_ServiceDesc.ServiceName, status)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func loadConfig(path string) (*config.File, []byte, error) {
	raw := config.Example()
	if path != "" {
		var err error
		if raw, err = os.ReadFile(path); err != nil {
			return nil, nil, fmt.Errorf("config: %w", err)
		}
	}
	name := path
	if name == "" {
		name = "example.yaml (bundled)"
	}
	f, err := config.Parse(name, raw)
	return f, raw, err
}

// watchConfig reloads the routes file when it changes; an invalid file keeps
// the last good configuration and says why.
func watchConfig(ctx context.Context, path string, dir *extauthz.Directory, log *slog.Logger) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	last := dir.Version()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f, raw, err := loadConfig(path)
		if raw != nil && contentVersion(raw) == last {
			continue
		}
		if err != nil {
			log.Error("routes file invalid; keeping the last good configuration", "path", path, "err", err)
			if raw != nil {
				last = contentVersion(raw)
			}
			continue
		}
		last = contentVersion(raw)
		dir.Set(f, last)
		log.Info("routes file reloaded", "path", path, "version", last)
	}
}

// verificationKeys are the signing key itself plus any configured JWKS.
func verificationKeys(ctx context.Context, o *options, signer capability.Signer, log *slog.Logger, start func(string, func() error)) (capability.KeySource, error) {
	own, err := capability.NewStaticKeys(map[string]crypto.PublicKey{signer.KeyID(): signer.Public()})
	if err != nil {
		return nil, err
	}
	sources := capability.KeySources{own}
	more, err := jwksSource(ctx, "jwks", o.jwksFile, o.jwksURL, log, start)
	if err != nil {
		return nil, err
	}
	if more != nil {
		sources = append(sources, more...)
	}
	return sources, nil
}

// jwksSource is the keys of a JWKS file and/or URL, each watched under start;
// nil when neither is set.
func jwksSource(ctx context.Context, name, file, url string, log *slog.Logger, start func(string, func() error)) (capability.KeySources, error) {
	var out capability.KeySources
	if file != "" {
		f, err := capability.NewJWKSFile(file)
		if err != nil {
			return nil, err
		}
		start(name+"-file", func() error {
			return ignoreCanceled(f.Watch(ctx, 5*time.Second, func(err error) { log.Error(name+" file reload failed", "err", err) }))
		})
		out = append(out, f)
	}
	if url != "" {
		u, err := capability.NewJWKSURL(capability.JWKSURLConfig{URL: url})
		if err != nil {
			return nil, err
		}
		start(name+"-url", func() error {
			return ignoreCanceled(u.Run(ctx, func(err error) { log.Error(name+" url refresh failed", "err", err) }))
		})
		out = append(out, u)
	}
	return out, nil
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// newTokenService is POST /v1/tokens: workload credential in, capability token
// out, as the bundle's tokens policy decides.
func newTokenService(ctx context.Context, o *options, a *authz, log *slog.Logger, reg prometheus.Registerer, start func(string, func() error)) (*tokenservice.Service, error) {
	var wv tokenservice.WorkloadVerifier
	agentNamespace := o.agentNamespace
	if o.workloadIssuer == "" {
		dev, err := tokenservice.DevWorkloadVerifier(a.signer)
		if err != nil {
			return nil, err
		}
		wv = dev
		if agentNamespace == "" {
			agentNamespace = tokenservice.DevWorkloadNamespace
		}
		log.Warn("token service accepts DEVELOPMENT workload credentials (aisecops token --workload); set --workload-issuer in production")
	} else {
		keys, err := jwksSource(ctx, "workload-jwks", o.workloadJWKSFile, o.workloadJWKSURL, log, start)
		if err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			return nil, errors.New("--workload-issuer needs --workload-jwks-file or --workload-jwks-url")
		}
		v, err := capability.NewWorkloadVerifier(capability.WorkloadConfig{Issuer: o.workloadIssuer, Audience: o.workloadAudience, Keys: keys})
		if err != nil {
			return nil, err
		}
		wv = v
	}
	return tokenservice.New(tokenservice.Config{
		Signer: a.signer, Issuer: o.tokenIssuer, Audience: o.tokenAudience, MaxTTL: o.maxTokenTTL,
		Workload: wv, AgentLookup: a.dir.Agent, ToolLookup: a.dir.Tool, WorkloadLookup: a.dir.WorkloadAgent,
		AgentNamespace: agentNamespace, Revocations: a.revs, Runs: a.store, Redact: a.inspector.Redact,
		Policy: a.engine, Audit: a.audit, PolicyVersion: a.engine.Version, Logger: log, Registerer: reg,
	})
}

// jwksHandler publishes the token signing key, for verifiers elsewhere.
func jwksHandler(signer capability.Signer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		data, err := capability.PublicJWKS(signer)
		if err != nil {
			http.Error(w, "jwks unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(data)
	})
}

// contentVersion is a short content hash of a configuration file.
func contentVersion(raw []byte) string {
	s := sha256.Sum256(raw)
	return hex.EncodeToString(s[:])[:12]
}

// loadOrCreateSecret reads a secret file, creating a random one (0600) if absent.
func loadOrCreateSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	s := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", err
	}
	return s, nil
}

// mergeWarnings is the union of warning maps.
func mergeWarnings(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// defaultGCPercent is the garbage collector's target when GOGC is not set.
// A Check allocates ~45 KB that dies within it and the live heap is small
// (caches of bounded size), so collecting at 4× the live heap instead of 2×
// halves the collector's share of CPU (≈10% of a Check under load at the
// default) for a few tens of MB. GOGC and GOMEMLIMIT, when set, win.
const defaultGCPercent = 400

func tuneGC(log *slog.Logger) {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	debug.SetGCPercent(defaultGCPercent)
	log.Debug("garbage collector target", "gogc", defaultGCPercent)
}
