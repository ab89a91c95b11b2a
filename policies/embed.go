// Package policies owns the bundled Rego policy bundle: the default
// authorization policy (package aisecops.authz), its data (data.json: escalation
// rules the Go risk calculator reads, accepted policy versions, lookup tables)
// and its Rego unit tests. The directory is also a plain OPA bundle directory, so
// `opa test policies/` and `aisecops policy test` run the same tests.
//
// It holds files only: it must not import OPA or any package of this module.
// Compiling and evaluating the bundle is extauthz/policy's job.
package policies

import (
	"embed"
	"io/fs"
)

// files is read-only and set by the compiler, so it is not mutable global state.
//
//go:embed *.rego data.json
var files embed.FS

// FS returns the bundle's files (policies, data.json and *_test.rego) rooted at
// the bundle directory.
func FS() fs.FS { return files }
