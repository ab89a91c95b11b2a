// Package capability owns capability tokens (AISecOps v1.0, sections 5.2 and
// 18; controls AIS-CAP-01/02): verifying them (signature, algorithm, key
// selection, registered and capability claims, lifetime), caching verified
// tokens, the key sources they are checked against (static keys, a JWKS file,
// a JWKS URL), signing and minting them, and verifying the workload
// credentials the token service accepts.
//
// It must not decide anything a policy decides (scope, run binding, single-use
// jti bookkeeping, budgets) and must not read the request: callers hand it the raw
// bearer string and the route's tool. A token's header never causes I/O: jku, x5u,
// jwk, x5c and crit are refused, and kid only selects among keys configured here.
// Every error returned by a verifier is a *reason.Error whose Message is safe to
// show an agent; no error ever contains the token.
package capability
