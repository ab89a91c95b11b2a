// Package finding owns the one vocabulary of egress inspection results that
// the inspector produces, the policy reads and the audit log records: a
// Finding names a detector, where it matched, how often, and a keyed hash of
// the matched value, grouped into a small set of classes. It never carries the
// matched value. It must not import any other package of this module.
package finding

// Classes group detectors for policy and for the chain risk.
const (
	Secret      = "secret"      // cloud and API keys, private keys, tokens
	PII         = "pii"         // emails, card numbers, national ids, IBANs
	Sensitive   = "sensitive"   // classification markers, contract clauses
	Destination = "destination" // a host, recipient or URL off the tool's allowlist
	Injection   = "injection"   // instructions injected into context bound for a model
	Size        = "size"        // a payload far larger than its tool class carries
	Encoding    = "encoding"    // a body or value that could not be decoded for inspection
)

// Finding is one inspection result. The matched value never appears: Hash is
// an HMAC keyed per deployment, so equal values correlate within a deployment
// and cannot be brute-forced from the audit log.
type Finding struct {
	Detector string `json:"detector"`
	Location string `json:"location"`
	Class    string `json:"class"`
	Count    int    `json:"count"`
	Hash     string `json:"hash,omitempty"`
}
