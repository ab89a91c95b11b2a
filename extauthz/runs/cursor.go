package runs

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"

	"github.com/aisecops/aisecops-envoy/riskstore"
)

// A cursor is "c1." and the base64url of the index position to continue below
// (8 bytes) and a digest of that position and the listing's filters (8
// bytes). It is opaque to callers but not a secret, and the digest is not a
// MAC: an operator may read every run anyway, and a forged position is just
// another place in the same listing, filtered as asked. The digest makes a
// corrupted cursor, or one taken from a listing with other filters, an
// error (400) rather than a silent jump.
const cursorPrefix = "c1."

// maxCursor bounds an incoming cursor before it is decoded.
const maxCursor = 64

var errBadCursor = errors.New("runs: bad cursor")

func encodeCursor(pos uint64, q riskstore.RunQuery) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], pos)
	copy(b[8:], cursorDigest(pos, q))
	return cursorPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

func decodeCursor(s string, q riskstore.RunQuery) (uint64, error) {
	if len(s) > maxCursor || len(s) <= len(cursorPrefix) || s[:len(cursorPrefix)] != cursorPrefix {
		return 0, errBadCursor
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s[len(cursorPrefix):])
	if err != nil || len(b) != 16 {
		return 0, errBadCursor
	}
	pos := binary.BigEndian.Uint64(b[:8])
	if pos == 0 || !bytes.Equal(b[8:], cursorDigest(pos, q)) {
		return 0, errBadCursor
	}
	return pos, nil
}

func cursorDigest(pos uint64, q riskstore.RunQuery) []byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint64([]byte("aisecops runs cursor v1\x00"), pos))
	h.Write([]byte("\x00" + q.Agent + "\x00" + q.Decision + "\x00"))
	if !q.Since.IsZero() {
		h.Write([]byte(q.Since.UTC().Format(time.RFC3339Nano)))
	}
	return h.Sum(nil)[:8]
}
