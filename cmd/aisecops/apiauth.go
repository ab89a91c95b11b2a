package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
)

// defaultAPIAudience is the audience operator JWTs must carry: never the
// capability tokens' or the workload credentials', so no credential of one kind
// is accepted as another.
const defaultAPIAudience = "aisecops-api"

// apiAuth is who may call the HTTP API: the admin token in $AISECOPS_HOME
// (every role), the entries of --api-credentials, and JWTs of
// --api-jwt-issuer with a "roles" claim.
func apiAuth(ctx context.Context, o *options, log *slog.Logger, start func(string, func() error)) (*httpapi.Auth, error) {
	admin, err := loadOrCreateSecret(filepath.Join(o.home, "admin-token"))
	if err != nil {
		return nil, err
	}
	creds := []httpapi.Credential{{Name: "admin", TokenSHA256: httpapi.TokenSHA256(admin), Roles: []string{httpapi.RoleAdmin}}}
	if o.apiCredentials != "" {
		more, err := httpapi.LoadCredentials(o.apiCredentials)
		if err != nil {
			return nil, err
		}
		creds = append(creds, more...)
	}
	static, err := httpapi.NewStaticTokens(creds)
	if err != nil {
		return nil, err
	}
	auth := &httpapi.Auth{Authenticators: []httpapi.Authenticator{static}}
	if o.apiJWTIssuer != "" {
		switch o.apiJWTAudience {
		case o.tokenAudience, o.workloadAudience:
			return nil, errors.New("--api-jwt-audience must differ from the capability token and workload audiences")
		}
		keys, err := jwksSource(ctx, "api-jwks", o.apiJWKSFile, o.apiJWKSURL, log, start)
		if err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			return nil, errors.New("--api-jwt-issuer needs --api-jwks-file or --api-jwks-url")
		}
		v, err := capability.NewOperatorVerifier(capability.OperatorConfig{Issuer: o.apiJWTIssuer, Audience: o.apiJWTAudience, Keys: keys})
		if err != nil {
			return nil, err
		}
		auth.Authenticators = append(auth.Authenticators, httpapi.OperatorJWTs{Verifier: v})
	}
	log.Info("HTTP API credentials", "admin_token", filepath.Join(o.home, "admin-token"), "credentials", len(creds)-1, "jwt_issuer", o.apiJWTIssuer)
	return auth, nil
}

// runAPIToken: `aisecops api-token --name N --roles operator,approver` prints a
// new random bearer token on stdout and, on stderr, the --api-credentials
// entry that grants it (only its SHA-256: the file holds no usable secret).
func runAPIToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("api-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "who the token is for (recorded as who approved, for example) — required")
	roles := fs.String("roles", httpapi.RoleOperator, "comma-separated roles: "+strings.Join(httpapi.Roles, ", "))
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		return fmt.Errorf("--name is required: %w", flag.ErrHelp)
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	tok := hex.EncodeToString(b[:])
	entry := httpapi.Credential{Name: *name, TokenSHA256: httpapi.TokenSHA256(tok), Roles: strings.Split(*roles, ",")}
	if _, err := httpapi.NewStaticTokens([]httpapi.Credential{entry}); err != nil {
		return err
	}
	y, err := yaml.Marshal([]httpapi.Credential{entry})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "# add to the --api-credentials file:\n%s", y)
	fmt.Fprintln(stdout, tok)
	return nil
}
