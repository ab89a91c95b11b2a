package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/redis/go-redis/v9"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/internal/redistest"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// system is what a bench or a soak runs against: a fresh redis-server, the
// real server on it and (for the bench) the floor, all on loopback, all
// started here and stopped by close.
type system struct {
	dir    string // everything lives under it
	home   string // $AISECOPS_HOME of the server: key, audit log, logs
	routes *config.File
	mix    *mix
	bin    string // the aisecops binary

	redis  *redistest.Server
	rc     *redis.Client
	serve  *proc
	noop   *proc
	logOut io.Writer
}

type systemOptions struct {
	aisecops string // path of the aisecops binary
	dir      string // working directory; a temporary one when empty
	floor    bool   // start the no-op floor too
	pprof    bool   // serve pprof on loopback
	// redisArgs are added to redis-server's command line; the default
	// persistence is an append-only file fsynced every second, as a
	// deployment that must not forget debits when Redis restarts runs it.
	redisArgs []string
	volatile  bool // redisArgs turn persistence off: serve must be told to accept it
}

// defaultRedisArgs: AOF on (fsync every second), no RDB snapshots. The soak
// needs the AOF (a restarted Redis must still know every debit it
// acknowledged); the bench uses the same, so Redis CPU includes writing it.
var defaultRedisArgs = []string{"--appendonly", "yes", "--appendfsync", "everysec", "--save", ""}

// aisecopsBinary is --aisecops, or else the aisecops next to this binary, or
// else the one on PATH.
func aisecopsBinary(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "aisecops")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("aisecops")
	if err != nil {
		return "", errors.New("no aisecops binary: build it (make build) or pass --aisecops")
	}
	return p, nil
}

func startSystem(ctx context.Context, o systemOptions, logOut io.Writer) (_ *system, err error) {
	s := &system{logOut: logOut}
	defer func() {
		if err != nil {
			s.close() // what started so far; the result is nil
		}
	}()
	if s.bin, err = aisecopsBinary(o.aisecops); err != nil {
		return nil, err
	}
	s.dir = o.dir
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "aisecops-load-"); err != nil {
			return nil, err
		}
	}
	s.home = filepath.Join(s.dir, "home")
	redisDir := filepath.Join(s.dir, "redis")
	for _, d := range []string{s.home, redisDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	raw, routes, err := routesFile()
	if err != nil {
		return nil, err
	}
	s.routes = routes
	routesPath := filepath.Join(s.home, "routes.yaml")
	if err := os.WriteFile(routesPath, raw, 0o600); err != nil {
		return nil, err
	}
	// The server's development key, made here first so the load signs its
	// tokens with the very key the server verifies them with.
	signer, _, err := capability.LoadOrCreateDevKey(filepath.Join(s.home, "dev-signing-key.pem"))
	if err != nil {
		return nil, err
	}
	if s.mix, err = newMix(routes, signer); err != nil {
		return nil, err
	}

	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found on PATH (apt-get install -y redis-server)")
	}
	args := o.redisArgs
	if args == nil {
		args = defaultRedisArgs
	}
	if s.redis, err = redistest.NewServer(redisBin, redisDir, args...); err != nil {
		return nil, err
	}
	s.rc = redis.NewClient(&redis.Options{Addr: s.redis.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 5 * time.Second, PoolSize: 4})
	fmt.Fprintf(logOut, "redis-server %s (dir %s, %s)\n", s.redis.Addr(), redisDir, shellJoin(args))

	if o.floor {
		if s.noop, err = startNoop(ctx, s.dir); err != nil {
			return nil, err
		}
		fmt.Fprintf(logOut, "no-op floor %s (pid %d)\n", s.noop.addr("grpc"), s.noop.pid())
	}
	if s.serve, err = startServe(ctx, s.bin, s.home, routesPath, "redis://"+s.redis.Addr(), o.pprof, o.volatile); err != nil {
		return nil, err
	}
	fmt.Fprintf(logOut, "aisecops serve %s (pid %d, home %s)\n", s.serve.addr("grpc"), s.serve.pid(), s.home)
	if err := s.waitServing(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// waitServing waits until the server's gRPC health says SERVING: policy
// loaded and the store answering.
func (s *system) waitServing(ctx context.Context, timeout time.Duration) error {
	clients, closeAll, err := dialHealth(s.serve.addr("grpc"))
	if err != nil {
		return err
	}
	defer closeAll()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if err := s.serve.alive(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := clients.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("health %s", resp.GetStatus())
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("aisecops serve not SERVING after %s: %v; log %s", timeout, last, filepath.Join(s.home, "serve.log"))
}

// preflight sends one Check of every kind as each agent and fails, saying
// why, unless the server allows them all: a load that is denied measures the
// wrong path.
func (s *system) preflight(ctx context.Context, client envoy_service_auth_v3.AuthorizationClient, agents ...string) error {
	var errs []error
	for _, agent := range agents {
		for k := range numKinds {
			run := fmt.Sprintf("preflight-%s-%d-%d", agent, k, time.Now().UnixNano())
			c, err := s.mix.build(agent, run, run+"-q", k, 1)
			if err != nil {
				return err
			}
			if a := check(ctx, client, c.req, 5*time.Second); !a.allowed {
				errs = append(errs, fmt.Errorf("%s %s (%s) denied: %s", agent, kindNames[k], kindTools[k], a.code))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("preflight: the load's own requests are not allowed, so it would measure denials (serve log: %s):\n%w",
			filepath.Join(s.home, "serve.log"), errors.Join(errs...))
	}
	return nil
}

func (s *system) close() {
	if s.serve != nil {
		if err := s.serve.stop(15 * time.Second); err != nil {
			fmt.Fprintln(s.logOut, "stopping aisecops serve:", err)
		}
	}
	if s.noop != nil {
		_ = s.noop.stop(5 * time.Second)
	}
	if s.rc != nil {
		_ = s.rc.Close()
	}
	if s.redis != nil {
		s.redis.Kill()
	}
}

// shellJoin shows a command line as a shell would take it.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = a
		if a == "" || strings.ContainsAny(a, " \t\"'") {
			q[i] = strconv.Quote(a)
		}
	}
	return strings.Join(q, " ")
}
