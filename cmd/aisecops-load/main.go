// Command aisecops-load measures the authz server under load, against a
// no-op ext_authz server measured in the same run (the floor), and soaks it
// while Redis is killed under it. It starts everything it measures itself —
// a fresh redis-server, `aisecops serve` and the floor — on loopback, and
// stops them when done.
//
//	aisecops-load bench [flags]   the table of the performance issue
//	aisecops-load soak [flags]    fixed rate while Redis is killed; checks invariants
//	aisecops-load noop [--addr]   the floor server alone
//
// It is a measuring instrument: it signs tokens with the development key of
// the server it starts, and it must never be pointed at a deployment.
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
		fmt.Fprintln(os.Stderr, "aisecops-load:", err)
		os.Exit(1)
	}
}

const usage = `usage: aisecops-load <command> [flags]

commands:
  bench   floor and aisecops serve (on Redis) at each concurrency and run length: rps,
          latency, server and Redis CPU per Check, Redis round trips, ratios to the floor
  soak    aisecops serve at a fixed rate while Redis is SIGKILLed and restarted; then
          checks the audit log and Redis for lost, double or over-budget debits
  noop    the no-op ext_authz server (the floor) alone

Run 'aisecops-load <command> -h' for a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "soak":
		return runSoak(ctx, args[1:], stdout, stderr)
	case "noop":
		return runNoop(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
