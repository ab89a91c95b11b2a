// Command aisecops is the product's one binary: the ext_authz decision service
// (serve), the xDS control plane (xds), both at once on the embedded default
// (all), and the operator tools (token, policy, audit). main is thin: flags →
// config → wire → run, stopped by SIGINT/SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "aisecops:", err)
		os.Exit(1)
	}
}

const usage = `usage: aisecops <command> [flags]

commands:
  all      authz service + xDS control plane in one process (the embedded default)
  serve    the ext_authz gRPC service (:9191) and the HTTP API (:8181)
  xds      the xDS control plane (:18000)
  token    mint a development capability token: token --agent A --tool T [--run R] [--ttl 5m]
  policy   test or evaluate a policy bundle: policy test [DIR] | policy eval --input FILE [DIR]
  audit    audit verify FILE | audit permissions --config NEW [--since OLD] [--acknowledged FILE]
  replay   decide recorded Checks again under a candidate bundle: replay --audit FILE --policies DIR [--config FILE] [--json]
  test     run execution-plan suites through the Check pipeline: test [SUITE.yaml…] (none: the shipped threat suite)
  simulate where approval, halt and each budget fall per agent: simulate chain [--config FILE]
  api-token  a bearer token for the HTTP API: api-token --name N --roles operator,approver
  dev-certs  a development CA and TLS certificates for every listener: dev-certs --out DIR [--hosts h1,h2]

Every flag can also be set as AISECOPS_<NAME> (AISECOPS_REDIS_URL for --redis-url).
Run 'aisecops <command> -h' for a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "all":
		return runServe(ctx, rest, stderr, true, true)
	case "serve":
		return runServe(ctx, rest, stderr, true, false)
	case "xds":
		return runServe(ctx, rest, stderr, false, true)
	case "token":
		return runToken(rest, stdout, stderr)
	case "policy":
		return runPolicy(ctx, rest, stdout, stderr)
	case "api-token":
		return runAPIToken(rest, stdout, stderr)
	case "audit":
		if len(rest) > 0 && rest[0] == "permissions" {
			return runAuditPermissions(ctx, rest[1:], stdout, stderr)
		}
		return runAudit(rest, stdout, stderr)
	case "dev-certs":
		return runDevCerts(rest, stdout, stderr)
	case "test":
		return runTest(ctx, rest, stdout, stderr)
	case "replay":
		return runReplay(ctx, rest, stdout, stderr)
	case "simulate":
		return runSimulate(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}
