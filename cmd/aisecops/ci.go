package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/aisecops/aisecops-envoy/extauthz/authority"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/suite"
	"github.com/aisecops/aisecops-envoy/policies"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// The CI commands (AIS-GOV-01): each prints its report and returns an error,
// so the process exits 1, when the release must not ship.

// runTest: `aisecops test [SUITE.yaml…] [--config FILE] [--policies DIR]
// [--junit FILE] [--json]`. No suite runs the shipped threat suite.
func runTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	set := flag.NewFlagSet("test", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprintln(stderr, "usage: aisecops test [SUITE.yaml…] [--config FILE] [--policies DIR] [--junit FILE] [--json]\n\nWith no suite, runs the shipped threat-regression suite.")
		set.PrintDefaults()
	}
	cfgPath := set.String("config", "", "routes file the suites run against (default: the bundled example)")
	polDir := set.String("policies", "", "policy bundle directory (default: the bundled policies)")
	junit := set.String("junit", "", "also write the results as JUnit XML to this file")
	asJSON := set.Bool("json", false, "print the results as JSON")
	paths, err := parseInterleaved(set, args)
	if err != nil {
		return err
	}
	routes, routesName, err := loadRoutes(*cfgPath)
	if err != nil {
		return err
	}
	var suites []*suite.Suite
	if len(paths) == 0 {
		s, err := suite.Threats()
		if err != nil {
			return err
		}
		suites = append(suites, s)
	}
	for _, p := range paths {
		s, err := suite.Load(p)
		if err != nil {
			return err
		}
		suites = append(suites, s)
	}
	h, err := suite.New(ctx, *polDir)
	if err != nil {
		return err
	}
	rep, err := suite.Run(ctx, h, routes, routesName, suites)
	if err != nil {
		return err
	}
	if *junit != "" {
		if err := writeFile(*junit, rep.WriteJUnit); err != nil {
			return err
		}
	}
	if err := writeReport(stdout, *asJSON, rep); err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("%d of %d cases failed", rep.Failed, rep.Passed+rep.Failed)
	}
	return nil
}

// runSimulate: `aisecops simulate chain [--config FILE] [--policies DIR] [--json]`.
func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "chain" {
		fmt.Fprintln(stderr, "usage: aisecops simulate chain [--config FILE] [--policies DIR] [--max-steps N] [--json]")
		return flag.ErrHelp
	}
	set := flag.NewFlagSet("simulate chain", flag.ContinueOnError)
	set.SetOutput(stderr)
	cfgPath := set.String("config", "", "routes file whose agents are simulated (default: the bundled example)")
	polDir := set.String("policies", "", "policy bundle directory (default: the bundled policies)")
	maxSteps := set.Int("max-steps", 100, "steps after which a chain nothing stopped is a problem")
	asJSON := set.Bool("json", false, "print the results as JSON")
	if _, err := parseInterleaved(set, args[1:]); err != nil {
		return err
	}
	routes, routesName, err := loadRoutes(*cfgPath)
	if err != nil {
		return err
	}
	h, err := suite.New(ctx, *polDir)
	if err != nil {
		return err
	}
	rep, err := suite.Simulate(ctx, h, routes, routesName, suite.ChainOptions{MaxSteps: *maxSteps})
	if err != nil {
		return err
	}
	if err := writeReport(stdout, *asJSON, rep); err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("%d chain or budget problems", rep.Problems)
	}
	return nil
}

// runAuditPermissions: `aisecops audit permissions --config NEW [--since OLD]
// [--policies DIR] [--policies-since DIR] [--acknowledged FILE] [--json]`.
func runAuditPermissions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	set := flag.NewFlagSet("audit permissions", flag.ContinueOnError)
	set.SetOutput(stderr)
	cfgPath := set.String("config", "", "the release's routes file (default: the bundled example)")
	since := set.String("since", "", "the previous release's routes file: report what changed and fail when authority grew")
	polDir := set.String("policies", "", "the release's policy bundle directory (default: the bundled policies)")
	polSince := set.String("policies-since", "", "the previous release's policy bundle directory: compare rules and data")
	ackPath := set.String("acknowledged", "", "YAML list of accepted growths ({agent, tool, change, field, reason})")
	asJSON := set.Bool("json", false, "print the report as JSON")
	if _, err := parseInterleaved(set, args); err != nil {
		return err
	}
	in := authority.Input{}
	var err error
	if in.Routes, in.RoutesName, err = loadRoutes(*cfgPath); err != nil {
		return err
	}
	if in.Policy, err = loadBundle(ctx, *polDir); err != nil {
		return err
	}
	if *since != "" {
		if in.Since, in.SinceName, err = loadRoutes(*since); err != nil {
			return err
		}
	}
	if *polSince != "" {
		if in.SincePolicy, err = loadBundle(ctx, *polSince); err != nil {
			return err
		}
	}
	if *ackPath != "" {
		if in.Acks, err = authority.LoadAcks(*ackPath); err != nil {
			return err
		}
	}
	rep, err := authority.Audit(in)
	if err != nil {
		return err
	}
	if err := writeReport(stdout, *asJSON, rep); err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("authority grew in %d places not listed in the acknowledged file", rep.Unacknowledged)
	}
	return nil
}

// parseInterleaved parses flags placed before, between or after the
// positional arguments, which it returns.
func parseInterleaved(set *flag.FlagSet, args []string) ([]string, error) {
	if err := parseWithEnv(set, args); err != nil {
		return nil, err
	}
	var pos []string
	for rest := set.Args(); len(rest) > 0; rest = set.Args() {
		pos = append(pos, rest[0])
		if err := set.Parse(rest[1:]); err != nil {
			return nil, err
		}
	}
	return pos, nil
}

// loadRoutes loads a routes file and the name it goes by in reports.
func loadRoutes(path string) (*config.File, string, error) {
	f, err := config.Load(path)
	if path == "" {
		path = "example.yaml (bundled)"
	}
	return f, path, err
}

// loadBundle compiles a policy bundle (a bundle that does not compile fails
// the audit) and returns it with its files.
func loadBundle(ctx context.Context, dir string) (*authority.Bundle, error) {
	eng, err := policy.New(ctx, policy.Options{Dir: dir})
	if err != nil {
		return nil, err
	}
	var files fs.FS = policies.FS()
	if dir != "" {
		files = os.DirFS(dir)
	}
	return &authority.Bundle{Version: eng.Version(), Hash: eng.Hash(), Files: files}, nil
}

// writeFile writes what write produces to path.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

// report is what test, simulate chain and audit permissions print.
type report interface {
	WriteJSON(io.Writer) error
	WriteText(io.Writer) error
}

func writeReport(w io.Writer, asJSON bool, r report) error {
	if asJSON {
		return r.WriteJSON(w)
	}
	return r.WriteText(w)
}
