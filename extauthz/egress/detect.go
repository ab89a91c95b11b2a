package egress

import (
	"bytes"
	"math/bits"
)

// Detectors are hand-written scanners; nothing here is a regular expression,
// so nothing can backtrack. One pass over the text does three things at each
// byte: digit-led identifiers (cards, SSNs), letter-led ones (IBAN, NINO), and
// a multi-literal prefilter (first byte, then a bitmap of second bytes, then
// the literals sharing that start) for the fixed-prefix secrets, the keyword
// of a credential assignment, JWT and PEM openings, URL "://", classification
// markers and contract clauses. A literal's handler examines a bounded run and
// the literal is not looked for again before the run's end, so every detector
// is linear in the text whatever it holds. Email addresses have their own
// vectorised pass over '@'.

type kind uint8

const (
	kToken kind = iota
	kJWT
	kPEM
	kKey
	kURL
	kMarker
	kClause
	kGate
)

type literal struct {
	// lit is what the prefilter looks for: for keywords, clauses and gates a
	// rarer substring of the word (full), since a common English bigram at
	// its start ("in", "te", "co") would make most bytes candidates.
	lit  string // lower case when fold
	full string // the whole keyword (kKey)
	fold bool   // match ASCII case-insensitively
	kind kind
	fam  mask // detector family that needs it
	arg  int  // index into tokens / clauses
}

// token is a secret with a fixed, distinctive prefix.
type token struct {
	prefix   string
	det      string
	min, max int             // length of the part after the prefix
	body     func(byte) bool // characters of that part
}

// matcher is built once per Inspector.
type matcher struct {
	lits   []literal
	tokens []token
	first  [256][]uint16  // literal indices by first byte
	second [256][4]uint64 // second bytes that may follow each first byte
	iban   map[string]int // IBAN length per country
	cls    [256]uint8     // clsDigit | clsUpper | clsLiteral per byte
}

const (
	clsDigit uint8 = 1 << iota
	clsUpper
	clsLiteral
)

func newMatcher() *matcher {
	m := &matcher{iban: ibanLengths()}
	m.tokens = []token{
		{"AKIA", "aws_access_key_id", 16, 16, upperDigit},
		{"ASIA", "aws_access_key_id", 16, 16, upperDigit},
		{"ghp_", "github_token", 36, 255, isAlnum},
		{"gho_", "github_token", 36, 255, isAlnum},
		{"ghu_", "github_token", 36, 255, isAlnum},
		{"ghs_", "github_token", 36, 255, isAlnum},
		{"ghr_", "github_token", 36, 255, isAlnum},
		{"github_pat_", "github_token", 50, 255, wordChar},
		{"xoxb-", "slack_token", 10, 255, urlSafe},
		{"xoxa-", "slack_token", 10, 255, urlSafe},
		{"xoxp-", "slack_token", 10, 255, urlSafe},
		{"xoxr-", "slack_token", 10, 255, urlSafe},
		{"xoxs-", "slack_token", 10, 255, urlSafe},
		{"xapp-", "slack_token", 10, 255, urlSafe},
		{"sk_live_", "stripe_secret_key", 20, 255, isAlnum},
		{"rk_live_", "stripe_secret_key", 20, 255, isAlnum},
		{"sk-ant-", "anthropic_api_key", 32, 255, urlSafe},
		{"sk-", "openai_api_key", 20, 255, urlSafe},
		{"AIza", "google_api_key", 35, 35, urlSafe},
		{"glpat-", "gitlab_token", 20, 255, urlSafe},
		{"npm_", "npm_token", 36, 36, isAlnum},
	}
	for i, t := range m.tokens {
		m.lits = append(m.lits, literal{lit: t.prefix, kind: kToken, fam: mSecret, arg: i})
	}
	m.lits = append(m.lits,
		literal{lit: "eyJ", kind: kJWT, fam: mSecret},
		literal{lit: "-----BEGIN ", kind: kPEM, fam: mSecret},
		literal{lit: "://", kind: kURL, fam: mURL},
	)
	// Key-name fragments after which an assigned value is a credential when
	// it looks generated.
	for _, k := range [][2]string{{"secret", "ecret"}, {"token", "oken"}, {"passw", "assw"}, {"api_key", "api_k"}, {"apikey", "apik"},
		{"api-key", "api-k"}, {"access_key", "ccess_k"}, {"accesskey", "ccessk"}, {"credential", "redentia"}, {"private_key_id", "_key_id"}} {
		m.lits = append(m.lits, literal{lit: k[1], full: k[0], fold: true, kind: kKey, fam: mSecret})
	}
	// Classification markers: upper case only, since "confidential" in an
	// email footer is noise and "CONFIDENTIAL" heading a document is a label.
	for _, k := range []string{"CONFIDENTIAL", "PROPRIETARY", "INTERNAL ONLY", "DO NOT DISTRIBUTE", "TRADE SECRET", "PRIVILEGED"} {
		m.lits = append(m.lits, literal{lit: k, kind: kMarker, fam: mSensitive})
	}
	// Contract clause headings: minClauses distinct ones in contract context
	// (a gate word) are the contract terms in output of the AISecOps
	// specification's data-exfiltration case (section 3.5).
	for i, k := range []string{"mnif" /* indemnif */, "iabilit" /* limitation of liability */, "rning law", "rminat" /* termination */, "jeure",
		"ual property", "yment terms", "n-compete", "xclusiv", "quidated", "fidentialit", "rranties", "einafter"} {
		m.lits = append(m.lits, literal{lit: k, fold: true, kind: kClause, fam: mSensitive, arg: i})
	}
	for _, k := range []string{"greement", "ntract", "partie", "party"} {
		m.lits = append(m.lits, literal{lit: k, fold: true, kind: kGate, fam: mSensitive})
	}
	for i, l := range m.lits {
		c0, c1 := l.lit[0], l.lit[1]
		starts := []byte{c0}
		seconds := []byte{c1}
		if l.fold {
			starts = appendCase(starts, c0)
			seconds = appendCase(seconds, c1)
		}
		for _, a := range starts {
			m.cls[a] |= clsLiteral
			m.first[a] = append(m.first[a], uint16(i))
			for _, b := range seconds {
				m.second[a][b>>6] |= 1 << (b & 63)
			}
		}
	}
	for c := '0'; c <= '9'; c++ {
		m.cls[c] |= clsDigit
	}
	for c := 'A'; c <= 'Z'; c++ {
		m.cls[c] |= clsUpper
	}
	return m
}

func appendCase(s []byte, c byte) []byte {
	if c >= 'a' && c <= 'z' {
		return append(s, c-'a'+'A')
	}
	return s
}

const minClauses = 3

func lowerByte(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func (l *literal) at(b []byte, i int) bool {
	if len(b)-i < len(l.lit) {
		return false
	}
	if !l.fold {
		return string(b[i:i+len(l.lit)]) == l.lit
	}
	for k := 0; k < len(l.lit); k++ {
		if lowerByte(b[i+k]) != l.lit[k] {
			return false
		}
	}
	return true
}

// detect runs the detector families of m over one view.
func (s *scan) detect(b []byte, loc string, m mask, derived bool) {
	mt := s.in.match
	if cap(s.next) < len(mt.lits) {
		s.next = make([]int, len(mt.lits))
	}
	next := s.next[:len(mt.lits)]
	clear(next)
	clear(s.doneVals)
	pii := m&mPII != 0
	var clauses uint32
	gate := false
	n := len(b)
	if m&(mDLP|mURL) == 0 {
		n = 0 // the injection pass only
	}
	cls := &mt.cls
	for i := 0; i < n; i++ {
		c := b[i]
		f := cls[c]
		if f == 0 {
			continue
		}
		if pii && f&clsDigit != 0 {
			if i > 0 && (isAlnum(b[i-1]) || b[i-1] == '.') {
				continue
			}
			// No literal starts with a digit or continues a digit run.
			i = s.digitRun(b, i, loc, derived) - 1
			continue
		}
		if pii && f&clsUpper != 0 && i+3 < n && isUpper(b[i+1]) && isDigit(b[i+2]) && isDigit(b[i+3]) && (i == 0 || !isAlnum(b[i-1])) {
			s.iban(b, i, loc, derived)
			s.nino(b, i, loc, derived)
		}
		if f&clsLiteral == 0 || i+1 >= n {
			continue
		}
		c1 := b[i+1]
		if mt.second[c][c1>>6]&(1<<(c1&63)) == 0 {
			continue
		}
		for _, li := range mt.first[c] {
			l := &mt.lits[li]
			if l.fam&m == 0 || i < next[li] || !l.at(b, i) {
				continue
			}
			end := i + len(l.lit)
			switch l.kind {
			case kToken:
				end = s.tokenAt(b, i, &mt.tokens[l.arg], loc, derived)
			case kJWT:
				end = s.jwtAt(b, i, loc, derived)
			case kPEM:
				end = s.pemAt(b, i, loc, derived)
			case kKey:
				end = s.assignmentAt(b, i, len(l.lit), l.full, loc, derived)
			case kURL:
				end = s.urlAt(b, i, loc, derived)
			case kMarker:
				s.value("classification_marker", ClassSensitive, loc, []byte(l.lit), derived)
			case kClause:
				clauses |= 1 << l.arg
			case kGate:
				gate = true
			}
			next[li] = max(end, i+1)
		}
	}
	for _, v := range s.generic {
		if !s.col.hashes[s.in.hash(v)] {
			s.value("generic_secret", ClassSecret, loc, v, derived)
		}
	}
	s.generic = s.generic[:0]
	if gate && bits.OnesCount32(clauses) >= minClauses {
		s.value("contract_terms", ClassSensitive, loc, []byte("contract_terms"), derived)
	}
	if pii {
		s.emails(b, loc, derived)
	}
	if m&mInjection != 0 {
		s.injection(lowerASCII(b), loc, derived)
	}
}

// lowerASCII lowercases ASCII letters only, so offsets into it are offsets
// into the original.
func lowerASCII(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = lowerByte(c)
	}
	return out
}

func (s *scan) tokenAt(b []byte, start int, t *token, loc string, derived bool) int {
	j := start + len(t.prefix)
	for j < len(b) && t.body(b[j]) {
		j++
	}
	if start > 0 && urlSafe(b[start-1]) {
		return j // inside a longer word
	}
	n := j - start - len(t.prefix)
	if n < t.min || n > t.max || j < len(b) && isAlnum(b[j]) {
		return j
	}
	v := b[start:j]
	if t.prefix == "sk-" && (bytes.HasPrefix(v, []byte("sk-ant-")) || !mixed(v[3:])) {
		return j // the Anthropic entry has it; or a slug like sk-some-words
	}
	s.value(t.det, ClassSecret, loc, v, derived)
	return j
}

// jwtAt checks header.payload.signature where the header decodes to JSON
// with an "alg".
func (s *scan) jwtAt(b []byte, start int, loc string, derived bool) int {
	j := start
	for j < len(b) && urlSafe(b[j]) {
		j++
	}
	if start > 0 && (urlSafe(b[start-1]) || b[start-1] == '.') {
		return j
	}
	h := b[start:j]
	if len(h) < 10 || j >= len(b) || b[j] != '.' {
		return j
	}
	p := j + 1
	q := p
	for q < len(b) && urlSafe(b[q]) {
		q++
	}
	if q-p < 10 || !bytes.HasPrefix(b[p:], []byte("ey")) || q >= len(b) || b[q] != '.' {
		return q
	}
	r := q + 1
	for r < len(b) && urlSafe(b[r]) {
		r++
	}
	if !bytes.Contains(decodeB64(s.decBuf, h), []byte(`"alg"`)) {
		return r
	}
	s.value("jwt", ClassSecret, loc, b[start:r], derived)
	return r
}

// pemAt checks "-----BEGIN … PRIVATE KEY-----" (RSA, EC, OPENSSH, PGP,
// ENCRYPTED, PKCS#8); the hash is over the key material so the same key
// correlates however it is wrapped.
func (s *scan) pemAt(b []byte, at int, loc string, derived bool) int {
	start := at + len("-----BEGIN ")
	hdr := b[start:min(start+48, len(b))]
	e := bytes.Index(hdr, []byte("-----"))
	if e < 0 || !bytes.Contains(hdr[:e], []byte("PRIVATE KEY")) {
		return start
	}
	body := start + e + 5
	stop := min(body+16<<10, len(b))
	if x := bytes.Index(b[body:stop], []byte("-----END")); x >= 0 {
		stop = body + x
	}
	var key []byte
	for _, c := range b[body:stop] {
		if isB64(c) && c != '-' && c != '_' {
			key = append(key, c)
		}
	}
	s.value("private_key", ClassSecret, loc, key, derived)
	return stop
}

// assignmentAt checks key = value / "key": "value" around a credential
// keyword: an AWS secret access key (40 base64 characters under a key naming
// AWS or a secret access key), a GCP service-account private key id, or any
// generated-looking value (length >= 20, letters and digits, entropy >= 3.5
// bits per character) not already named by a specific detector.
func (s *scan) assignmentAt(b []byte, hit, kwLen int, kw string, loc string, derived bool) int {
	ks := hit
	for ks > 0 && hit-ks < 32 && keyChar(b[ks-1]) {
		ks--
	}
	ke := hit + kwLen
	for ke < len(b) && ke-hit < 32 && keyChar(b[ke]) {
		ke++
	}
	vs, ve, ok := assignedValue(b, ke)
	if !ok {
		return max(ke, ve) // past an over-long value run: nothing in it is a key
	}
	if s.doneVals[vs] {
		return ve // "secret_access_key" holds two keywords
	}
	if s.doneVals == nil {
		s.doneVals = map[int]bool{}
	}
	s.doneVals[vs] = true
	key, v := lowerASCII(b[ks:ke]), b[vs:ve]
	if !bytes.Contains(key, []byte(kw)) {
		return ve // the anchor was inside another word ("broken")
	}
	switch {
	case len(v) == 40 && b64Std(v) && (bytes.Contains(key, []byte("aws")) || bytes.Contains(key, []byte("secretaccesskey")) || bytes.Contains(key, []byte("secret_access_key"))):
		s.value("aws_secret_access_key", ClassSecret, loc, v, derived)
	case kw == "private_key_id" && len(v) == 40 && allHex(v):
		s.value("gcp_service_account_key", ClassSecret, loc, v, derived)
	case len(v) >= 20 && mixed(v) && entropy(v) >= 3.5:
		// Decided after the pass: a specific detector may name it later on.
		s.generic = append(s.generic, v)
	}
	return ve
}

// urlAt checks the host of scheme://authority at the "://" at i.
func (s *scan) urlAt(b []byte, at int, loc string, derived bool) int {
	ss := at
	for ss > 0 && at-ss < 32 && schemeChar(b[ss-1]) {
		ss--
	}
	for ss < at && !isAlpha(b[ss]) {
		ss++
	}
	host, end := urlHost(b, at+3)
	if at-ss >= 2 {
		s.checkHost(host, "url_host_not_allowed", loc, derived)
	}
	return end
}
