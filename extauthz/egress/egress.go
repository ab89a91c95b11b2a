// Package egress owns the inspection of one outbound request before it leaves
// through Envoy: data-loss detectors (secrets, PII, sensitivity markers) over the
// path, query, headers and body after canonicalising their encodings, destination
// controls (route host agreement, IP literals, the tool's destination arguments),
// payload size per tool class, and the context firewall for model calls.
//
// It is pure: no I/O, no clock, no logging. It never lets a matched value out:
// findings carry a detector name, a location, a count and an HMAC of the value,
// and errors carry fixed text only. Deciding what a finding means is policy's
// job, not this package's; a request that cannot be inspected safely (a
// compression bomb, a corrupt body, encodings nested past the depth bound) is a
// *reason.Error with reason.EgressBlocked so the caller denies it.
//
// It must not import other extauthz packages except extauthz/reason and
// extauthz/finding.
package egress

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"

	"github.com/aisecops/aisecops-envoy/extauthz/finding"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// Request is the outbound request as the upstream would receive it.
type Request struct {
	Method    string
	Host      string // the Host header, if the caller has it separately
	Authority string // :authority
	Path      string
	RawQuery  string
	// Headers has lowercase names. The caller removes authorization; this package
	// also skips authorization, proxy-authorization and x-aisecops-* (they never
	// reach the upstream) and pseudo-headers.
	Headers         map[string]string
	ContentType     string
	ContentEncoding string
	Body            []byte
	ToolClass       string // read | write | external_send | exec | llm
	RouteHost       string // the host the route was configured for
	// Arguments is the canonical JSON of the tool call's arguments, or nil. When
	// nil, destination arguments are looked for in a JSON body instead.
	Arguments []byte
	// UntrustedContext is true when the caller's provenance labels mark the
	// context that led to this call as untrusted.
	UntrustedContext bool
	// Cancel, when closed, stops the inspection with an error (the Check's
	// deadline passed): nil never cancels.
	Cancel <-chan struct{}
	// TrustFirstUserMessage: on an llm route, the route declares the first
	// user message of a model call trusted (the end user's own words), so the
	// context firewall does not inspect it for instruction injection unless
	// UntrustedContext. Every other non-system message is inspected.
	TrustFirstUserMessage bool
}

// Policy is the per-tool (and per-agent) egress configuration.
type Policy struct {
	// DestinationArgs names the arguments carrying a destination (to, cc, url,
	// channel). Matched case-insensitively at any depth of the arguments.
	DestinationArgs []string
	// Destinations allows destination-argument values: an email recipient's
	// domain or a URL's host must equal or be a subdomain of an entry; any other
	// value (a chat channel) must equal an entry, ignoring case.
	Destinations []string
	// AllowedHosts are hosts besides RouteHost that the request may name
	// (Host, :authority, URLs in the path, query, body and arguments). An entry
	// "*.example.com" allows subdomains. Empty means RouteHost only.
	AllowedHosts []string
	// MaxBodyBytes overrides the default payload size per tool class.
	MaxBodyBytes map[string]int
}

// Limits bound the work of one inspection. Zero fields take the defaults.
type Limits struct {
	MaxDepth             int // nested encoding layers decoded (default 4)
	MaxDecodedBytes      int // bytes produced by all decoding in one request (default 64 MiB)
	MaxDecompressedBytes int // absolute cap on a decompressed body (default 4 MiB: 4× Envoy's default max_request_bytes)
	MaxCompressionRatio  int // decompressed/compressed, enforced past 1 MiB of output (default 100)
	MaxFindings          int // distinct findings kept (default 256)
	MaxParts             int // multipart parts (default 256)
}

// Defaults for Limits.
const (
	DefaultMaxDepth             = 4
	DefaultMaxDecodedBytes      = 64 << 20
	DefaultMaxDecompressedBytes = 4 << 20
	DefaultMaxCompressionRatio  = 100
	DefaultMaxFindings          = 256
	DefaultMaxParts             = 256
)

// DefaultMaxBodyBytes is the payload size per tool class above which a "size"
// finding is raised. Reads and exec carry small requests; a large body there is
// data leaving, not a query (a data-exfiltration signal in the AISecOps
// specification, v0.1 section 3.5: "output payloads disproportionately large
// relative to task type").
func DefaultMaxBodyBytes(class string) int {
	switch class {
	case "read", "exec":
		return 64 << 10
	case "external_send":
		return 256 << 10
	case "write":
		return 1 << 20
	case "llm":
		return 4 << 20
	default:
		return 1 << 20
	}
}

// Finding classes (package finding's vocabulary).
const (
	ClassSecret      = finding.Secret
	ClassPII         = finding.PII
	ClassDestination = finding.Destination
	ClassInjection   = finding.Injection
	ClassSize        = finding.Size
	// ClassSensitive marks document-level sensitivity evidence (classification
	// markers such as CONFIDENTIAL, a density of contract clauses): not a value
	// that leaks by itself, but what the spec's scenario 3.5 calls contract
	// terms in output.
	ClassSensitive = finding.Sensitive
)

// Finding is one detector hit. The matched value never appears; Hash is a
// truncated HMAC of its normalised form, so the same value correlates within a
// deployment while low-entropy values (card numbers) cannot be brute-forced
// from the audit log without the key. Hash is empty for findings about the
// request's shape (size) rather than a value.
type Finding = finding.Finding

// Result is the outcome of one inspection.
type Result struct {
	Findings []Finding `json:"findings"`
	// Truncated is true when more distinct findings existed than Limits.MaxFindings.
	Truncated bool `json:"truncated,omitempty"`
	// LLM is the context firewall's summary on llm routes, for the audit line's
	// context provenance; nil elsewhere.
	LLM *LLMSummary `json:"llm,omitempty"`
}

// Inspector runs inspections. It is safe for concurrent use.
type Inspector struct {
	key   []byte
	lim   Limits
	lex   lexicon
	match *matcher
	scans sync.Pool // *scan, reused (see newScan)
}

// MinKeyBytes is the shortest HMAC key accepted: a short key would let the
// hashes of low-entropy values be brute-forced.
const MinKeyBytes = 16

// NewInspector returns an Inspector hashing finding values with key.
func NewInspector(key []byte, lim Limits) (*Inspector, error) {
	if len(key) < MinKeyBytes {
		return nil, errors.New("egress: HMAC key shorter than 16 bytes")
	}
	if lim.MaxDepth <= 0 {
		lim.MaxDepth = DefaultMaxDepth
	}
	if lim.MaxDecodedBytes <= 0 {
		lim.MaxDecodedBytes = DefaultMaxDecodedBytes
	}
	if lim.MaxDecompressedBytes <= 0 {
		lim.MaxDecompressedBytes = DefaultMaxDecompressedBytes
	}
	if lim.MaxCompressionRatio <= 0 {
		lim.MaxCompressionRatio = DefaultMaxCompressionRatio
	}
	if lim.MaxFindings <= 0 {
		lim.MaxFindings = DefaultMaxFindings
	}
	if lim.MaxParts <= 0 {
		lim.MaxParts = DefaultMaxParts
	}
	return &Inspector{key: append([]byte(nil), key...), lim: lim, lex: newLexicon(), match: newMatcher()}, nil
}

// hash is the truncated HMAC-SHA256 of a normalised value.
func (in *Inspector) hash(v []byte) string {
	m := hmac.New(sha256.New, in.key)
	m.Write(v)
	var sum [sha256.Size]byte
	return hex.EncodeToString(m.Sum(sum[:0])[:8])
}

// Errors (internal detail of the *reason.Error; fixed text, never a value).
var (
	errDepth        = errors.New("egress: encodings nested deeper than the limit")
	errBudget       = errors.New("egress: decoded bytes over the limit")
	errDecompressed = errors.New("egress: decompressed body over the size cap")
	errRatio        = errors.New("egress: compression ratio over the cap")
	errCorrupt      = errors.New("egress: compressed body is corrupt")
	errCanceled     = errors.New("egress: the request's deadline passed during inspection")
	errEncoding     = errors.New("egress: unsupported content-encoding")
	errMultipart    = errors.New("egress: malformed multipart body")
)

func blocked(err error) error {
	return reason.Wrap(reason.EgressBlocked, err, "request body cannot be inspected")
}

// Inspect inspects one request under pol. An error is always a *reason.Error
// with reason.EgressBlocked; the findings gathered so far are not returned then,
// because the request is to be denied anyway.
func (in *Inspector) Inspect(req *Request, pol *Policy) (Result, error) {
	if pol == nil {
		pol = &Policy{}
	}
	s := newScan(in, req, pol)
	defer s.release()
	if err := s.run(); err != nil {
		return Result{}, blocked(err)
	}
	return s.result(), nil
}

// skipHeader reports headers that never reach the upstream or are inspected
// elsewhere.
func skipHeader(name string) bool {
	return name == "authorization" || name == "proxy-authorization" ||
		strings.HasPrefix(name, "x-aisecops-") || strings.HasPrefix(name, ":") ||
		name == "host"
}

// noRequest and noPolicy are what Redact and MaskSecrets scan strings under:
// a scan reads them, never writes them.
var (
	noRequest Request
	noPolicy  Policy
)

// MaskSecrets returns v unchanged, or "redacted:<keyed hash>" when it
// carries a secret (personal data stays): what an approver may read of a
// held call's arguments.
func (in *Inspector) MaskSecrets(v string) string {
	if v == "" {
		return v
	}
	s := newScan(in, &noRequest, &noPolicy)
	defer s.release()
	if err := s.text([]byte(v), "value", 0, mSecret, false); err == nil && len(s.col.list) == 0 {
		return v
	}
	return "redacted:" + in.hash([]byte(v))
}

// Redact returns v unchanged, or "redacted:" and the keyed hash of v when a
// secret or personal-data detector finds something in it (after the same
// canonicalisation as a request). Callers pass every agent-written string they
// are about to store (provenance labels, ids, method names), so an agent
// cannot smuggle a secret into the audit log through a field nobody inspects;
// equal values keep equal replacements, so correlation survives.
func (in *Inspector) Redact(v string) string {
	if v == "" {
		return v
	}
	s := newScan(in, &noRequest, &noPolicy)
	defer s.release()
	if err := s.text([]byte(v), "value", 0, mSecret|mPII, false); err == nil && len(s.col.list) == 0 {
		return v
	}
	return "redacted:" + in.hash([]byte(v))
}
