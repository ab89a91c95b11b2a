package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"time"
)

// MaxLineBytes bounds one line: a Write of a larger record fails (and is
// denied), and a verifier stops at a longer line instead of reading it all.
const MaxLineBytes = 16 << 20

// The line format. Every line, header and checkpoint included, ends with
//
//	"prev_hash":"<64 hex>","hash":"<64 hex>"}
//
// and its hash is HMAC-SHA256(chain key, lineDomain ‖ the line up to, not
// including, `,"hash":"`). The MAC covers prev_hash, so the lines form a chain.
const (
	hashHexLen = 2 * sha256.Size
	// hashSuffixLen is len(`,"hash":"`) + 64 + len(`"}`).
	hashSuffixLen = 9 + hashHexLen + 2
)

var (
	lineDomain    = []byte("aisecops-audit-v1 line\n")
	genesisDomain = "aisecops-audit-v1 genesis\n"
	zeroHash      = string(bytes.Repeat([]byte{'0'}, hashHexLen))
	// encodedTail is how an encoded line with placeholder hashes ends.
	encodedTail = []byte(`"prev_hash":"` + zeroHash + `","hash":"` + zeroHash + `"}` + "\n")
)

// splitLine cuts a line (without its newline) into the MAC'd prefix and the
// hash it carries, or reports that the line does not end as a chain line must.
func splitLine(line []byte) (prefix, sum []byte, ok bool) {
	if len(line) < hashSuffixLen {
		return nil, nil, false
	}
	cut := len(line) - hashSuffixLen
	tail := line[cut:]
	if !bytes.HasPrefix(tail, []byte(`,"hash":"`)) || !bytes.HasSuffix(tail, []byte(`"}`)) {
		return nil, nil, false
	}
	sum = tail[9 : 9+hashHexLen]
	for _, c := range sum {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return nil, nil, false
		}
	}
	return line[:cut], sum, true
}

// chainMAC computes line hashes under one key. Not safe for concurrent use.
type chainMAC struct {
	h   hash.Hash
	sum []byte
}

func newChainMAC(key []byte) *chainMAC {
	return &chainMAC{h: hmac.New(sha256.New, key), sum: make([]byte, 0, sha256.Size)}
}

// line returns the hash of a line whose MAC'd prefix is given, hex-encoded
// into dst (64 bytes).
func (m *chainMAC) line(prefix, dst []byte) {
	m.h.Reset()
	m.h.Write(lineDomain)
	m.h.Write(prefix)
	m.sum = m.h.Sum(m.sum[:0])
	hex.Encode(dst, m.sum)
}

// genesis is the prev_hash of a log's header line: a keyed value naming the
// log and what it continues, so lines cannot be moved between logs and a
// header cannot be rewritten to link elsewhere.
func (m *chainMAC) genesis(logID string, link *Link) string {
	m.h.Reset()
	m.h.Write([]byte(genesisDomain + logID + "\n"))
	if link != nil {
		m.h.Write([]byte(link.LogID + "\n" + strconv.Itoa(link.Lines) + "\n" + link.Head + "\n"))
	}
	return hex.EncodeToString(m.h.Sum(nil))
}

// Link names the log a file continues: its id, its line count and the hash of
// its last line.
type Link struct {
	LogID string `json:"log_id"`
	Lines int    `json:"lines"`
	Head  string `json:"head"`
}

// Checkpoint is a signed statement that a log's first Lines lines, ending at
// byte offset Bytes, have Head as the hash of the last. Seq increases with
// every checkpoint a writer signs, across rotations.
type Checkpoint struct {
	Seq   uint64    `json:"seq"`
	LogID string    `json:"log_id"`
	Lines int       `json:"lines"`
	Bytes int64     `json:"bytes"`
	Head  string    `json:"head"`
	TS    time.Time `json:"ts"`
	KeyID string    `json:"key_id"`
	Sig   []byte    `json:"sig"`
}

// message is what the signature covers: a fixed text form, so that it does
// not depend on how JSON spells the fields.
func (c *Checkpoint) message() []byte {
	return fmt.Appendf(nil, "aisecops-audit-v1 checkpoint\nseq=%d\nlog_id=%s\nlines=%d\nbytes=%d\nhead=%s\nts=%s\nkey_id=%s\n",
		c.Seq, c.LogID, c.Lines, c.Bytes, c.Head, c.TS.UTC().Format(time.RFC3339Nano), c.KeyID)
}

func (c *Checkpoint) sign(priv ed25519.PrivateKey) {
	c.KeyID = KeyID(priv.Public().(ed25519.PublicKey))
	c.Sig = ed25519.Sign(priv, c.message())
}

var errUnknownKey = errors.New("signed by an unknown key")

// verify checks the signature against the key named by KeyID.
func (c *Checkpoint) verify(keys map[string]ed25519.PublicKey) error {
	pub, ok := keys[c.KeyID]
	if !ok {
		return fmt.Errorf("%w %q (a wrong public key given, or forged)", errUnknownKey, c.KeyID)
	}
	if !ed25519.Verify(pub, c.message(), c.Sig) {
		return errors.New("signature does not verify")
	}
	return nil
}

// controlLine is the header or a checkpoint line. Like Record, it ends with
// prev_hash and hash.
type controlLine struct {
	TS         time.Time   `json:"ts"`
	Event      string      `json:"event"`
	LogID      string      `json:"log_id,omitempty"`
	ChainKeyID string      `json:"chain_key_id,omitempty"`
	Link       *Link       `json:"link,omitempty"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	PrevHash   string      `json:"prev_hash"`
	Hash       string      `json:"hash"`
}

// lineFields are what a verifier reads from any line.
type lineFields struct {
	TS         time.Time   `json:"ts"`
	Event      string      `json:"event"`
	DecisionID string      `json:"decision_id"`
	LogID      string      `json:"log_id"`
	ChainKeyID string      `json:"chain_key_id"`
	Link       *Link       `json:"link"`
	Checkpoint *Checkpoint `json:"checkpoint"`

	tsRaw []byte // TS not yet parsed (readRecordHead)
}

// encodeLine encodes v (a Record or controlLine whose PrevHash and Hash are
// placeholders) as one line with its newline, appended to dst.
func encodeLine(dst *bytes.Buffer, v any) error {
	enc := json.NewEncoder(dst)
	enc.SetEscapeHTML(false)
	start := dst.Len()
	if err := enc.Encode(v); err != nil { // Encode appends the '\n'
		return fmt.Errorf("audit: encode: %w", err)
	}
	line := dst.Bytes()[start:]
	if !bytes.HasSuffix(line, encodedTail) || bytes.IndexByte(line, '\n') != len(line)-1 {
		return errors.New("audit: encode: the line does not end with prev_hash and hash")
	}
	if len(line)-1 > MaxLineBytes {
		return fmt.Errorf("audit: encode: line of %d bytes exceeds %d", len(line)-1, MaxLineBytes)
	}
	return nil
}

// compactObject reports whether in can go into a line as it is: a JSON
// object on one line with no whitespace bytes outside strings to strip,
// which is what json.Marshal produces (the replay input, extauthz's
// sealInput). The encoder would otherwise validate and compact those bytes
// once more (most of a record's encoding time); anything else takes that
// path. That the bytes are valid JSON is trusted from their producer.
func compactObject(in []byte) bool {
	if len(in) < 2 || in[0] != '{' || in[len(in)-1] != '}' {
		return false
	}
	quoted, escaped := false, false
	for _, c := range in {
		switch {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case c < 0x20 || (!quoted && c == ' '):
			return false // a line break, or whitespace the encoder strips
		}
	}
	return !quoted && !escaped
}

// spliceInput puts input into a record's line encoded without it, where the
// encoder would have: before the first of sealed, policy and prev_hash the
// record has. Those keys, and what follows them, are the record's own fixed
// fields (a key's quotes are never escaped; a string's always are), so the
// last occurrence of the key is the top-level one.
func spliceInput(buf *bytes.Buffer, input []byte, r *Record) error {
	next := []byte(`,"prev_hash":`)
	switch {
	case r.Sealed != nil:
		next = []byte(`,"sealed":`)
	case r.Policy != nil:
		next = []byte(`,"policy":`)
	}
	line := buf.Bytes()
	at := bytes.LastIndex(line, next)
	if at < 0 {
		return errors.New("audit: encode: no place for the input")
	}
	tail := bytes.Clone(line[at:])
	buf.Truncate(at)
	buf.WriteString(`,"input":`)
	buf.Write(input)
	buf.Write(tail)
	if buf.Len()-1 > MaxLineBytes {
		return fmt.Errorf("audit: encode: line of %d bytes exceeds %d", buf.Len()-1, MaxLineBytes)
	}
	return nil
}

// seal fills prev into an encoded line (with its newline, from encodeLine)
// and computes its hash into the line, which it also returns (64 hex bytes,
// aliasing line).
func (m *chainMAC) seal(line []byte, prev string) []byte {
	end := len(line) - 1 // the '\n'
	hashAt := end - 2 - hashHexLen
	prevAt := hashAt - len(`","hash":"`) - hashHexLen
	copy(line[prevAt:prevAt+hashHexLen], prev)
	m.line(line[:end-hashSuffixLen], line[hashAt:hashAt+hashHexLen])
	return line[hashAt : hashAt+hashHexLen]
}
