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

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
)

// runAudit: `aisecops audit verify FILE`.
func runAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) != 2 || args[0] != "verify" {
		fmt.Fprintln(stderr, "usage: aisecops audit verify FILE")
		return flag.ErrHelp
	}
	res, err := audit.VerifyFile(args[1])
	if err != nil {
		return fmt.Errorf("audit chain broken after %d good lines: %w", res.Lines, err)
	}
	fmt.Fprintf(stdout, "ok: %d lines, chain intact, last hash %s\n", res.Lines, res.LastHash)
	return nil
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
