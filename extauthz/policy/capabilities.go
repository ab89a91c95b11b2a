package policy

import (
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// forbiddenBuiltins are removed from the capabilities every bundle is compiled
// with. They reach the network, read the clock or the runtime, or are random, so
// a decision would no longer be a function of the input and the bundle, and an
// audit record could not be replayed. A policy that
// calls one fails to compile; `with` cannot bring one back.
var forbiddenBuiltins = map[string]bool{
	"http.send":              true,
	"opa.runtime":            true,
	"trace":                  true,
	"time.now_ns":            true,
	"uuid.rfc4122":           true,
	"providers.aws.sign_req": true, // signs with the current time
	// Signing and verification read the clock (exp/nbf) or create key material.
	"io.jwt.encode_sign":     true,
	"io.jwt.encode_sign_raw": true,
	"io.jwt.decode_verify":   true,
	// Certificate verification checks validity against the current time.
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
	// JSON Schema validation resolves $ref, file:// and http:// included: a
	// decision would depend on files outside the bundle.
	"json.match_schema":  true,
	"json.verify_schema": true,
}

// forbiddenPrefixes covers builtin families: net.* (DNS lookups; the CIDR helpers
// go too, destination checks are Go's job), rand.*, and every io.jwt.verify_*.
var forbiddenPrefixes = []string{"net.", "rand.", "io.jwt.verify_"}

func forbidden(name string) bool {
	if forbiddenBuiltins[name] {
		return true
	}
	for _, p := range forbiddenPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Capabilities returns the restricted OPA capabilities every bundle is loaded,
// compiled and tested with: this OPA version's builtins minus the
// nondeterministic and network ones, and no hosts allowed for network access.
// Each call returns a fresh value, so callers may modify it.
func Capabilities() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	kept := caps.Builtins[:0]
	for _, b := range caps.Builtins {
		if !forbidden(b.Name) {
			kept = append(kept, b)
		}
	}
	caps.Builtins = kept
	caps.AllowNet = []string{}
	return caps
}
