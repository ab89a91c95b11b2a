package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/tokenservice"
)

// options are the flags common to the subcommands.
type options struct {
	home               string
	config             string
	policies           string
	authzAddr          string
	httpAddr           string
	xdsAddr            string
	xdsServer          string
	redisURL           string
	redisCluster       string
	allowVolatileRedis bool
	auditFile          string
	auditFsync         bool
	auditSealEvery     time.Duration
	sealKeys           string
	logLevel           string
	checkTimeout       time.Duration
	tokenIssuer        string
	tokenAudience      string
	maxTokenTTL        time.Duration
	signingKey         string
	jwksFile           string
	jwksURL            string
	nodeID             string
	rolloutGroups      string
	stagedRollout      bool
	apiCredentials     string
	apiJWTIssuer       string
	apiJWTAudience     string
	apiJWKSFile        string
	apiJWKSURL         string

	workloadIssuer   string
	workloadAudience string
	workloadJWKSURL  string
	workloadJWKSFile string
	agentNamespace   string
	revocationsFile  string
	pprofAddr        string

	listen listenOptions // TLS, the loopback rule and limits: listen.go
}

func defaultHome() string {
	if h := os.Getenv("AISECOPS_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".aisecops")
	}
	return ".aisecops"
}

// Token defaults shared by `aisecops token` and the verifier, so the two work
// together with no flags.
const (
	defaultIssuer   = "aisecops"
	defaultAudience = "aisecops-egress"
)

func commonFlags(name string, stderr io.Writer) (*flag.FlagSet, *options) {
	o := &options{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.home, "home", defaultHome(), "state directory (development key, audit log, admin token)")
	fs.StringVar(&o.config, "config", "", "routes and agents file (default: the bundled example)")
	fs.StringVar(&o.policies, "policies", "", "Rego bundle directory (default: the bundled policies)")
	fs.StringVar(&o.authzAddr, "authz-addr", defaultAuthzAddr, "ext_authz gRPC listen address")
	fs.StringVar(&o.httpAddr, "http-addr", defaultHTTPAddr, "HTTP API, /metrics and health listen address")
	fs.StringVar(&o.xdsAddr, "xds-addr", defaultXDSAddr, "xDS control plane listen address")
	fs.StringVar(&o.xdsServer, "xds-server", "", "control plane to take agent budgets from over xDS (serve only; default: the --config file)")
	fs.StringVar(&o.nodeID, "node-id", "aisecops-authz", "xDS node id of this authz replica")
	fs.StringVar(&o.workloadIssuer, "workload-issuer", "", "issuer of workload credentials for POST /v1/tokens (empty: development credentials from `aisecops token --workload`)")
	fs.StringVar(&o.workloadAudience, "workload-audience", tokenservice.DevWorkloadAudience, "audience of workload credentials")
	fs.StringVar(&o.workloadJWKSURL, "workload-jwks-url", "", "JWKS URL of the workload credential issuer (e.g. the Kubernetes API server's)")
	fs.StringVar(&o.workloadJWKSFile, "workload-jwks-file", "", "JWKS file of the workload credential issuer")
	fs.StringVar(&o.agentNamespace, "agent-namespace", "", "Kubernetes namespace whose service accounts act as the agents they are named like (default: none, or \"default\" with development credentials); other service accounts need the agent's workloads list")
	fs.StringVar(&o.apiCredentials, "api-credentials", "", "file of HTTP API bearer credentials: a YAML list of {name, token_sha256, roles} (see `aisecops api-token`)")
	fs.StringVar(&o.apiJWTIssuer, "api-jwt-issuer", "", "issuer of operator JWTs accepted by the HTTP API (roles from their \"roles\" claim)")
	fs.StringVar(&o.apiJWTAudience, "api-jwt-audience", defaultAPIAudience, "audience of operator JWTs")
	fs.StringVar(&o.apiJWKSFile, "api-jwks-file", "", "JWKS file of the operator JWT issuer")
	fs.StringVar(&o.apiJWKSURL, "api-jwks-url", "", "JWKS URL of the operator JWT issuer")
	fs.StringVar(&o.revocationsFile, "revocations-file", "", "JSON file of revoked token ids and agents (reloaded on change)")
	fs.StringVar(&o.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this loopback address, e.g. 127.0.0.1:6060 (default: off)")
	fs.StringVar(&o.rolloutGroups, "rollout-groups", "", "xDS rollout groups: canary=node-a,node-b;beta=node-c")
	fs.BoolVar(&o.stagedRollout, "staged-rollout", false, "hold a new routes version until POST /v1/xds/stage/{group} or /v1/xds/promote")
	fs.StringVar(&o.redisURL, "redis-url", "", "Redis URL for run state (redis:// or rediss://); default in memory")
	fs.BoolVar(&o.allowVolatileRedis, "allow-volatile-redis", false, "run on a Redis without the append-only file (spent budgets come back after a Redis restart; logged and shown by /readyz)")
	fs.StringVar(&o.redisCluster, "redis-cluster", "", "comma-separated Redis Cluster nodes host:port,…")
	fs.StringVar(&o.auditFile, "audit-file", "", "audit JSONL file (default $AISECOPS_HOME/audit.jsonl)")
	fs.BoolVar(&o.auditFsync, "audit-fsync", false, "fsync every audit line (durable against power loss; slower)")
	fs.DurationVar(&o.auditSealEvery, "audit-seal-every", 10*time.Millisecond, "longest an audit line waits for its signed sidecar checkpoint (0: one after every write batch)")
	fs.StringVar(&o.sealKeys, "seal-keys", "", "directory of the keys that seal recorded arguments for replay, shared by every replica (default $AISECOPS_HOME/seal-keys, created with a first key)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.checkTimeout, "check-timeout", time.Second, "upper bound of a Check when Envoy sends no deadline")
	fs.StringVar(&o.tokenIssuer, "token-issuer", defaultIssuer, "accepted (and minted) token issuer")
	fs.StringVar(&o.tokenAudience, "token-audience", defaultAudience, "accepted (and minted) token audience")
	fs.DurationVar(&o.maxTokenTTL, "max-token-ttl", 15*time.Minute, "maximum token lifetime (exp - iat)")
	fs.StringVar(&o.signingKey, "signing-key", "", "PEM signing key (default: the development key in $AISECOPS_HOME)")
	fs.StringVar(&o.jwksFile, "jwks-file", "", "JWKS file of token verification keys (besides the signing key)")
	fs.StringVar(&o.jwksURL, "jwks-url", "", "JWKS URL of token verification keys (besides the signing key)")
	addListenFlags(fs, &o.listen)
	return fs, o
}

// parseWithEnv applies AISECOPS_<NAME> environment values, then the command line.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		env := "AISECOPS_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", env, err))
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
	}
	return fs.Parse(args)
}

func (o *options) devKeyPath() string {
	if o.signingKey != "" {
		return o.signingKey
	}
	return filepath.Join(o.home, "dev-signing-key.pem")
}

func (o *options) sealKeysDir() string {
	if o.sealKeys != "" {
		return o.sealKeys
	}
	return filepath.Join(o.home, audit.SealKeysName)
}

func (o *options) auditPath() string {
	if o.auditFile != "" {
		return o.auditFile
	}
	return filepath.Join(o.home, "audit.jsonl")
}
