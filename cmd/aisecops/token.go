package main

import (
	"flag"
	"fmt"
	"github.com/aisecops/aisecops-envoy/extauthz/tokenservice"
	"io"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
)

// defaultPolicyVersion is the policy_version development tokens carry; the
// bundled policies accept it (data.aisecops.accepted_policy_versions).
const defaultPolicyVersion = "v1.0"

// runToken mints a development token with the key `aisecops all` uses.
func runToken(args []string, stdout, stderr io.Writer) error {
	fs, o := commonFlags("token", stderr)
	agent := fs.String("agent", "", "agent id (sub, agent_id) — required")
	tool := fs.String("tool", "", "tool the token is for — required")
	runID := fs.String("run", "", "bind the token to this run id")
	scope := fs.String("scope", "", "scope claim")
	ttlFlag := fs.Duration("ttl", 5*time.Minute, "lifetime (capped at --max-token-ttl)")
	ttl := ttlFlag
	singleUse := fs.Bool("single-use", false, "the token may be used once")
	maxRows := fs.Int64("max-rows", 0, "constraints.max_rows (0: none)")
	maxCost := fs.Float64("max-cost", 0, "constraints.max_cost (0: none)")
	pv := fs.String("policy-version", defaultPolicyVersion, "policy_version claim")
	workload := fs.Bool("workload", false, "mint a development WORKLOAD credential for --agent (for POST /v1/tokens) instead")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if *workload {
		if *agent == "" {
			return fmt.Errorf("--workload needs --agent: %w", flag.ErrHelp)
		}
		signer, _, err := capability.LoadOrCreateDevKey(o.devKeyPath())
		if err != nil {
			return err
		}
		ttl := time.Duration(0) // the development default (1h)
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "ttl" {
				ttl = *ttlFlag
			}
		})
		tok, err := tokenservice.MintDevWorkload(signer, *agent, ttl, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		return nil
	}
	if *agent == "" || *tool == "" {
		fs.Usage()
		return fmt.Errorf("--agent and --tool are required: %w", flag.ErrHelp)
	}
	var signer capability.Signer
	var err error
	if o.signingKey != "" {
		signer, err = capability.LoadSignerFile(o.signingKey)
	} else {
		var created bool
		signer, created, err = capability.LoadOrCreateDevKey(o.devKeyPath())
		if created {
			fmt.Fprintf(stderr, "created development signing key %s\n", o.devKeyPath())
		}
	}
	if err != nil {
		return err
	}
	req := capability.MintRequest{
		Issuer: o.tokenIssuer, Audience: o.tokenAudience, Agent: *agent, Tool: *tool, Scope: *scope,
		RunID: *runID, TTL: *ttl, MaxTTL: o.maxTokenTTL, PolicyVersion: *pv, SingleUse: *singleUse,
	}
	if *maxRows > 0 {
		req.Constraints.MaxRows = maxRows
	}
	if *maxCost > 0 {
		req.Constraints.MaxCost = maxCost
	}
	tok, _, err := capability.Mint(signer, req, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
