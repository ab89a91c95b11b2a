package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/replay"
)

const replayUsage = `usage: aisecops replay --audit FILE [--audit FILE…] --policies DIR [--config FILE] [--json] [--allow-changes]

Decides every recorded Check of the audit files again under the policy bundle
in DIR (and, with --config, the routes and agents of FILE) and lists the calls
it decides differently: allow→deny, deny→allow, approval changes and changed
reasons, with counts per tool and agent. It writes nothing and commits nothing.

The files are verified first (chain key and checkpoint key beside the last
FILE, as 'aisecops audit verify' does); --no-verify skips that for a copy
without its keys. Recorded arguments are opened with the seal keys
($AISECOPS_HOME/seal-keys, or --seal-keys).

Exit status: 0 when nothing changes, 1 when anything changes (unless
--allow-changes) or a record could not be replayed.
`

// runReplay: `aisecops replay`.
func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, replayUsage); fs.PrintDefaults() }
	var files multiFlag
	fs.Var(&files, "audit", "audit JSONL file, oldest first (repeatable; rotated files before the current one)")
	policies := fs.String("policies", "", "candidate policy bundle directory")
	cfg := fs.String("config", "", "candidate routes and agents file (default: the routes and agents as recorded)")
	home := fs.String("home", defaultHome(), "state directory (its seal-keys open the recorded arguments)")
	sealKeys := fs.String("seal-keys", "", "seal key directory (default $AISECOPS_HOME/seal-keys)")
	noVerify := fs.Bool("no-verify", false, "replay without verifying the files' chain and checkpoints")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	allowChanges := fs.Bool("allow-changes", false, "exit 0 even when decisions change")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if len(files) == 0 || *policies == "" || fs.NArg() > 0 {
		fs.Usage()
		return flag.ErrHelp
	}
	if !*noVerify {
		chain, signing := audit.DefaultKeyFiles(files[len(files)-1])
		keys, err := audit.LoadVerifyKeys(chain, signing)
		if err != nil {
			return fmt.Errorf("verify the audit files (or --no-verify): %w", err)
		}
		if _, err := audit.VerifyFiles(files, audit.VerifyOptions{Keys: keys, RequireSidecar: true}); err != nil {
			return fmt.Errorf("the audit files do not verify, so their records cannot be trusted for a replay: %w", err)
		}
	}
	var recs []audit.Record
	for _, f := range files {
		rs, err := readRecords(f)
		if err != nil {
			return err
		}
		recs = append(recs, rs...)
	}
	eng, err := policy.New(ctx, policy.Options{Dir: *policies})
	if err != nil {
		return fmt.Errorf("candidate bundle: %w", err)
	}
	opts := replay.Options{Bundle: eng.Current()}
	if *cfg != "" {
		f, raw, err := loadConfig(*cfg)
		if err != nil {
			return err
		}
		opts.Directory = extauthz.NewDirectory(f, contentVersion(raw))
	}
	if *sealKeys == "" {
		*sealKeys = filepath.Join(*home, audit.SealKeysName)
	}
	sealer, err := audit.LoadSealer(*sealKeys)
	if err != nil {
		return err
	}
	opts.Opener = sealer
	rep, err := replay.Diff(ctx, recs, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printReplay(stdout, &rep)
	}
	switch {
	case len(rep.Problems) > 0:
		return fmt.Errorf("%s could not be replayed", plural(len(rep.Problems), "record"))
	case rep.Changed > 0 && !*allowChanges:
		return fmt.Errorf("%s decided differently under the candidate", plural(rep.Changed, "call"))
	}
	return nil
}

func readRecords(path string) ([]audit.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	recs, err := audit.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// printReplay is the report for a terminal.
func printReplay(w io.Writer, rep *replay.Report) {
	fmt.Fprintf(w, "%s read: %d replayed, %d decided before the policy (kept), %d changed, %d problems\n",
		plural(rep.Total, "Check record"), rep.Replayed, rep.NotReplayable, rep.Changed, len(rep.Problems))
	if len(rep.Changes) > 0 {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nDECISION\tAGENT\tRUN\tTOOL\tCHANGE\tREASONS BEFORE → AFTER")
		for _, c := range rep.Changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s → %s\t%s → %s\n", c.DecisionID, c.AgentID, c.RunID, c.Tool, c.Before, c.After,
				strings.Join(c.ReasonsBefore, ","), strings.Join(c.ReasonsAfter, ","))
		}
		_ = tw.Flush()
		printCounts(w, "tool", rep.ByTool)
		printCounts(w, "agent", rep.ByAgent)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "problem: %s: %s\n", p.DecisionID, p.Error)
	}
}

func printCounts(w io.Writer, what string, m map[string]replay.Counts) {
	keys := make([]string, 0, len(m))
	for k, c := range m {
		if c.Changed > 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return
	}
	fmt.Fprintf(w, "\nchanged per %s:\n", what)
	slices.Sort(keys)
	for _, k := range keys {
		c := m[k]
		var kinds []string
		for _, kind := range replay.Kinds(c.ByKind) {
			kinds = append(kinds, fmt.Sprintf("%s %d", kind, c.ByKind[kind]))
		}
		fmt.Fprintf(w, "  %s: %d of %d (%s)\n", k, c.Changed, c.Replayed, strings.Join(kinds, ", "))
	}
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*m = append(*m, v)
	return nil
}
