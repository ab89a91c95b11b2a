package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/evidence"
)

const evidenceUsage = `usage: aisecops evidence --audit FILE [--from RFC3339] [--to RFC3339] --out FILE [--key F] [--signing-key F]
       aisecops evidence verify FILE [--public-key PEM]

The first form writes one signed evidence file: the audit records of
[from, to) from FILE and its rotated files (FILE.<time>), their chain and
checkpoint verification, and the AISecOps section 16 control coverage. It is
signed with the log's checkpoint signing key (audit-signing-key.pem beside
FILE), so the log's public key verifies both.

The second exits 0 when the signature and the content hold, and 1 naming the
first line (and record) that does not, or the audit line the export found bad.
`

// runEvidence: `aisecops evidence …` and `aisecops evidence verify FILE`.
func runEvidence(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		return runEvidenceVerify(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("evidence", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, evidenceUsage); fs.PrintDefaults() }
	home := fs.String("home", defaultHome(), "state directory (its audit.jsonl is the default --audit)")
	auditFile := fs.String("audit", "", "the audit log (default $AISECOPS_HOME/audit.jsonl); its rotated files are found beside it")
	fromS := fs.String("from", "", "first ts to export, RFC 3339 (default: the start)")
	toS := fs.String("to", "", "ts to export up to, excluded, RFC 3339 (default: the end)")
	out := fs.String("out", "", "the evidence file to write (- for stdout) — required")
	keyFile := fs.String("key", "", "the chain key (default: "+audit.ChainKeyName+" beside the log)")
	signingFile := fs.String("signing-key", "", "the checkpoint signing key that signs the export (default: "+audit.SigningKeyName+" beside the log)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *out == "" {
		fs.Usage()
		return fmt.Errorf("evidence: --out is required and no argument is taken: %w", flag.ErrHelp)
	}
	path := *auditFile
	if path == "" {
		path = filepath.Join(*home, "audit.jsonl")
	}
	var from, to time.Time
	for _, t := range []struct {
		s   string
		dst *time.Time
	}{{*fromS, &from}, {*toS, &to}} {
		if t.s == "" {
			continue
		}
		if *t.dst, err = time.Parse(time.RFC3339Nano, t.s); err != nil {
			return fmt.Errorf("evidence: --from and --to are RFC 3339 times: %w", err)
		}
	}
	defChain, defSigning := audit.DefaultKeyFiles(path)
	if *keyFile == "" {
		*keyFile = defChain
	}
	if *signingFile == "" {
		*signingFile = defSigning
	}
	keys, err := audit.LoadVerifyKeys(*keyFile, *signingFile)
	if err != nil {
		return err
	}
	signer, err := audit.LoadSigningKey(*signingFile)
	if err != nil {
		return err
	}
	files, err := audit.Files(path)
	if err != nil {
		return err
	}
	opts := evidence.Options{Files: files, Keys: keys, Signer: signer, From: from, To: to}
	var sum evidence.Summary
	if *out == "-" {
		sum, err = evidence.Export(stdout, opts)
	} else {
		sum, err = exportFile(*out, opts)
	}
	if err != nil {
		return err
	}
	verified := "the audit chain verified"
	if !sum.Verified {
		verified = "the audit chain did NOT verify (the failure is in the file)"
	}
	fmt.Fprintf(stderr, "evidence: %d records from %d files, %s; controls exercised %d of %d (%d of %d mandatory)\n",
		sum.Records, len(files), verified, sum.Coverage.Exercised, len(sum.Coverage.Controls), sum.Coverage.MandatoryExercised, sum.Coverage.Mandatory)
	if !sum.Verified {
		return errors.New("evidence written, but the audit log failed verification")
	}
	return nil
}

// exportFile writes the export to a temporary file beside path and renames
// it into place, so a failed export leaves no partial file behind.
func exportFile(path string, opts evidence.Options) (evidence.Summary, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".evidence-*")
	if err != nil {
		return evidence.Summary{}, err
	}
	defer os.Remove(tmp.Name())
	sum, err := evidence.Export(tmp, opts)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return sum, err
}

// runEvidenceVerify: `aisecops evidence verify FILE [--public-key PEM]`.
func runEvidenceVerify(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("evidence verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, evidenceUsage); fs.PrintDefaults() }
	home := fs.String("home", defaultHome(), "state directory (its "+audit.SigningKeyName+" is the default key)")
	pubFile := fs.String("public-key", "", "the public key that must have signed it, PEM (default: $AISECOPS_HOME/"+audit.SigningKeyName+")")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("evidence verify takes one FILE: %w", flag.ErrHelp)
	}
	if *pubFile == "" {
		*pubFile = filepath.Join(*home, audit.SigningKeyName)
	}
	pub, err := audit.LoadPublicKey(*pubFile)
	if err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := evidence.Verify(f, pub)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	fmt.Fprintf(stdout, "%s: OK: %d records, signed by key %s, the audit chain verified; controls exercised %d of %d\n",
		pos[0], rep.Records, rep.KeyID, rep.Coverage.Exercised, len(rep.Coverage.Controls))
	return nil
}
