package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
)

const auditUsage = `usage: aisecops audit verify FILE... [--key FILE] [--public-key FILE] [--allow-no-sidecar] [--json]
       aisecops audit rotate-seal-key [--seal-keys DIR]

verify: verifies audit log files as one chain, oldest first (rotated files,
then the live one: aisecops audit verify audit.jsonl.2* audit.jsonl), each
against its sidecar checkpoint FILE.checkpoint. Exits non-zero naming the first
bad line.

rotate-seal-key: adds a key to the ring that seals recorded arguments
($AISECOPS_HOME/seal-keys), which servers seal with once restarted; older
keys still open what they sealed. Keep every key as long as its records must
replay.
`

// runAudit: `aisecops audit verify FILE... [--key FILE] [--public-key FILE]`.
func runAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "rotate-seal-key" {
		fs := flag.NewFlagSet("audit rotate-seal-key", flag.ContinueOnError)
		fs.SetOutput(stderr)
		home := fs.String("home", defaultHome(), "state directory")
		dir := fs.String("seal-keys", "", "seal key directory (default $AISECOPS_HOME/seal-keys)")
		if err := parseWithEnv(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			*dir = filepath.Join(*home, audit.SealKeysName)
		}
		s, err := audit.NewSealer(*dir)
		if err != nil {
			return err
		}
		id, err := s.Rotate()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "new seal key %s in %s\n", id, *dir)
		return nil
	}
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(stderr, auditUsage)
		return flag.ErrHelp
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, auditUsage); fs.PrintDefaults() }
	keyFile := fs.String("key", "", "chain key file (default: "+audit.ChainKeyName+" beside the last FILE)")
	pubFile := fs.String("public-key", "", "checkpoint public key, PEM; the signing key also works (default: "+audit.SigningKeyName+" beside the last FILE)")
	noSidecar := fs.Bool("allow-no-sidecar", false, "accept a last FILE without its sidecar (a copy shipped alone): lines deleted after its last in-log checkpoint then go unnoticed")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	// Flags may follow the files.
	var files []string
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files, rest = append(files, fs.Arg(0)), fs.Args()[1:]
	}
	if len(files) == 0 {
		fs.Usage()
		return flag.ErrHelp
	}
	defChain, defSigning := audit.DefaultKeyFiles(files[len(files)-1])
	if *keyFile == "" {
		*keyFile = defChain
	}
	if *pubFile == "" {
		*pubFile = defSigning
	}
	keys, err := audit.LoadVerifyKeys(*keyFile, *pubFile)
	if err != nil {
		return err
	}
	res, verr := audit.VerifyFiles(files, audit.VerifyOptions{Keys: keys, RequireSidecar: !*noSidecar})
	if *asJSON {
		out := struct {
			OK     bool               `json:"ok"`
			Result audit.VerifyResult `json:"result"`
			Error  *audit.VerifyError `json:"error,omitempty"`
		}{OK: verr == nil, Result: res}
		if !errors.As(verr, &out.Error) && verr != nil {
			return verr
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		printAudit(stdout, res, verr)
	}
	if verr != nil {
		return fmt.Errorf("audit chain broken: %w", verr)
	}
	return nil
}

// printAudit says what was verified, file by file.
func printAudit(w io.Writer, res audit.VerifyResult, verr error) {
	if verr != nil {
		fmt.Fprintf(w, "verified before the failure: %s + %s\n", plural(res.Lines, "line"), plural(res.Checkpoints, "checkpoint line"))
		for _, f := range res.Files {
			fmt.Fprintf(w, "  %s: log %s, lines 1-%d good\n", f.Path, f.LogID, f.TotalLines)
		}
		return
	}
	fmt.Fprintf(w, "ok: %s + %s in %s, chain intact\n", plural(res.Lines, "line"), plural(res.Checkpoints, "checkpoint line"), plural(len(res.Files), "file"))
	for _, f := range res.Files {
		fmt.Fprintf(w, "  %s: log %s, %s (%s, %s)", f.Path, f.LogID, plural(f.TotalLines, "line"), plural(f.Records, "record"), plural(f.Checkpoints, "checkpoint"))
		if f.Link != nil {
			fmt.Fprintf(w, ", continues log %s", f.Link.LogID)
		}
		fmt.Fprintln(w)
		if f.SealedThrough > 0 {
			fmt.Fprintf(w, "    sealed through line %d by %s", f.SealedThrough, f.SealedBy)
		} else {
			fmt.Fprint(w, "    not sealed by any checkpoint")
		}
		if f.Sidecar != nil {
			fmt.Fprintf(w, "; sidecar seq %d, key %s, %s", f.Sidecar.Seq, f.Sidecar.KeyID, f.Sidecar.TS.Format(time.RFC3339))
		} else {
			fmt.Fprint(w, "; no sidecar")
		}
		fmt.Fprintf(w, "; %s unsealed (%s)\n", plural(f.UnsealedLines, "line"), plural(f.UnsealedRecords, "record"))
		if f.TornTailBytes > 0 {
			fmt.Fprintf(w, "    then a partial last line of %s: a write in progress or torn by a crash, never acknowledged (opening the log cuts it off)\n", plural(f.TornTailBytes, "byte"))
		}
	}
	fmt.Fprintf(w, "  head %s\n", res.Head)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// runPolicy: `aisecops policy test [DIR]` and `aisecops policy eval --input FILE [DIR]`.
func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: aisecops policy test [DIR] | aisecops policy eval --input FILE [DIR]")
		return flag.ErrHelp
	}
	switch args[0] {
	case "test":
		dir := ""
		if len(args) > 1 {
			dir = args[1]
		}
		results, err := policy.RunTests(ctx, dir)
		if err != nil {
			return err
		}
		failed := 0
		for _, r := range results {
			status := "PASS"
			if !r.Pass {
				status = "FAIL"
				failed++
			}
			fmt.Fprintf(stdout, "%s %s\n", status, r.Name)
		}
		fmt.Fprintf(stdout, "%d passed, %d failed\n", len(results)-failed, failed)
		if failed > 0 {
			return errors.New("policy tests failed")
		}
		return nil
	case "eval":
		fs := flag.NewFlagSet("policy eval", flag.ContinueOnError)
		fs.SetOutput(stderr)
		inputPath := fs.String("input", "", "input JSON file (the Rego input document)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		data, err := os.ReadFile(*inputPath)
		if err != nil {
			return err
		}
		var in policy.Input
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return fmt.Errorf("input: %w", err)
		}
		eng, err := policy.New(ctx, policy.Options{Dir: fs.Arg(0)})
		if err != nil {
			return err
		}
		d, err := eng.Eval(ctx, &in)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	}
	return fmt.Errorf("unknown policy command %q", args[0])
}
