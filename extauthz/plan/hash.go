package plan

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
)

// CanonicalJSON parses raw under the same strict rules as request bodies and
// returns its canonical form (compact, object keys sorted recursively, numbers
// as written). Equal documents give equal bytes, so the result can be hashed.
// Errors are *reason.Error (bad_plan or duplicate_key).
func CanonicalJSON(raw []byte) ([]byte, error) {
	v, err := parseStrict(raw, DefaultMaxJSONDepth)
	if err != nil {
		return nil, err
	}
	return appendCanonical(make([]byte, 0, len(raw)), &v), nil
}

// Hash returns the hex SHA-256 of parts, each prefixed with its length as 8
// big-endian bytes, so no two different part lists hash alike ("ab","c" vs
// "a","bc") and lists of different lengths never collide.
func Hash(parts ...[]byte) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0]))
}

// ArgumentsHash is the audit's arguments_hash of a call's canonical arguments.
func ArgumentsHash(canonicalArgs json.RawMessage) string {
	return Hash(canonicalArgs)
}

// PlanHash is what an approval binds to: the tool, its canonical arguments and
// the run. A retry with any of the three changed needs a new approval.
func PlanHash(tool string, canonicalArgs []byte, runID string) string {
	return Hash([]byte(tool), canonicalArgs, []byte(runID))
}
