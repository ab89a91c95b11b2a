package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/runs"
)

const runsUsage = `usage: aisecops runs show RUN_ID [--agent A] [--json] [--server URL] [--token-file F]
       aisecops runs list [--agent A] [--decision D] [--since RFC3339] [--limit N] [--cursor C] [--json]

Reads a running server's HTTP API (operator role). The credential is
AISECOPS_TOKEN, --token-file, or the admin token in $AISECOPS_HOME.
`

// runRuns: `aisecops runs show|list`.
func runRuns(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "show" && args[0] != "list") {
		fmt.Fprint(stderr, runsUsage)
		return fmt.Errorf("runs: want show or list: %w", flag.ErrHelp)
	}
	sub := args[0]
	fs := flag.NewFlagSet("runs "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, runsUsage); fs.PrintDefaults() }
	cf := addClientFlags(fs)
	agent := fs.String("agent", "", "the agent whose run it is (needed when agents share the run id)")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	decision := fs.String("decision", "", "list: runs with a step of this decision (allow, deny, require_approval)")
	since := fs.String("since", "", "list: runs updated at or after this RFC 3339 time")
	limit := fs.Int("limit", 50, "list: runs per page (1-500)")
	cursor := fs.String("cursor", "", "list: continue from this next_cursor")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *agent != "" {
		q.Set("agent", *agent)
	}
	if sub == "show" {
		if len(pos) != 1 {
			fs.Usage()
			return fmt.Errorf("runs show takes one RUN_ID: %w", flag.ErrHelp)
		}
		var tl runs.TimelineJSON
		if err := c.get("/v1/runs/"+url.PathEscape(pos[0])+"/timeline?"+q.Encode(), &tl); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, tl)
		}
		printTimeline(stdout, tl)
		return nil
	}
	if len(pos) != 0 {
		fs.Usage()
		return fmt.Errorf("runs list takes no arguments: %w", flag.ErrHelp)
	}
	for k, v := range map[string]string{"decision": *decision, "since": *since, "cursor": *cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", strconv.Itoa(*limit))
	var list runs.ListJSON
	if err := c.get("/v1/runs?"+q.Encode(), &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, list)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "RUN\tAGENT\tSTEPS\tLAST\tRISK\tSTARTED\tUPDATED")
	for _, r := range list.Runs {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%.3f\t%s\t%s\n", terminalSafe(r.RunID), terminalSafe(r.AgentID), r.Steps, r.LastDecision,
			r.CumulativeRisk, r.Started.Format(time.RFC3339), r.Updated.Format(time.RFC3339))
	}
	w.Flush()
	if list.NextCursor != "" {
		fmt.Fprintf(stdout, "more: aisecops runs list --cursor %s (same filters)\n", list.NextCursor)
	}
	return nil
}

// printTimeline is the terminal table of a run's steps.
func printTimeline(out io.Writer, tl runs.TimelineJSON) {
	fmt.Fprintf(out, "run %s of agent %s: %d steps\n", terminalSafe(tl.RunID), terminalSafe(tl.AgentID), len(tl.Steps))
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SEQ\tTIME\tTOOL\tDECISION\tR_STEP\tE\tT\tB\tSTEP\tTOTAL\tREASONS")
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	for _, s := range tl.Steps {
		reasons := strings.Join(s.Reasons, ",")
		if len(s.LinkedRuns) > 0 {
			reasons += " linked:" + strings.Join(s.LinkedRuns, ",")
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%s\n", s.Seq, s.TS.Format(time.RFC3339), terminalSafe(s.Tool), s.Decision,
			f(s.StepRisk.RStep), f(s.StepRisk.E), f(s.StepRisk.T), f(s.StepRisk.B), s.StepRisk.Step, s.CumulativeRisk, terminalSafe(reasons))
	}
	w.Flush()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseInterspersed parses flags wherever they stand among the positional
// arguments (`runs show RUN --agent A`), with AISECOPS_<NAME> defaults.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := parseWithEnv(fs, args); err != nil {
		return nil, err
	}
	var pos []string
	for fs.NArg() > 0 {
		pos = append(pos, fs.Arg(0))
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return nil, err
		}
	}
	return pos, nil
}
