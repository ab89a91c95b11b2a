package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// The sidecar (FILE.checkpoint) holds the latest checkpoint in one of two
// fixed 512-byte slots, written alternately (slot = seq mod 2) in place: one
// small pwrite per batch, no rename. A crash mid-write tears at most the slot
// being written, whose CRC then fails, and the other slot still holds the
// previous checkpoint. Each slot is a text line, so `cat` shows both:
//
//	<crc32 of the JSON, 8 hex> <checkpoint JSON><spaces>\n
//
// The CRC only tells a torn slot from a forged one: a slot whose CRC holds but
// whose signature does not is reported as forged.
const (
	slotSize    = 512
	sidecarSize = 2 * slotSize
	// SidecarSuffix is appended to a log's path to name its sidecar.
	SidecarSuffix = ".checkpoint"
)

func encodeSlot(c *Checkpoint) ([]byte, error) {
	js, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 0, slotSize)
	buf = fmt.Appendf(buf, "%08x %s", crc32.ChecksumIEEE(js), js)
	if len(buf) > slotSize-1 {
		return nil, fmt.Errorf("audit: checkpoint of %d bytes does not fit a sidecar slot", len(buf))
	}
	for len(buf) < slotSize-1 {
		buf = append(buf, ' ')
	}
	return append(buf, '\n'), nil
}

// blankSlot marks a slot empty (a failed batch undoes its checkpoint).
var blankSlot = append(bytes.Repeat([]byte{' '}, slotSize-1), '\n')

// errSidecarForged marks a sidecar slot that is intact but not validly signed.
var errSidecarForged = errors.New("forged")

// parseSidecar returns the valid checkpoint with the highest seq, nil when
// there is none (no sidecar, or only empty or torn slots), or an error when a
// slot is intact but its signature does not verify under keys.
func parseSidecar(data []byte, keys map[string]ed25519.PublicKey) (*Checkpoint, error) {
	var best *Checkpoint
	for slot := 0; slot*slotSize < len(data) && slot < 2; slot++ {
		raw := data[slot*slotSize : min(len(data), (slot+1)*slotSize)]
		raw = bytes.TrimRight(raw, " \n\x00")
		if len(raw) == 0 {
			continue
		}
		if len(raw) < 10 || raw[8] != ' ' {
			continue // torn
		}
		var sum uint32
		if _, err := fmt.Sscanf(string(raw[:8]), "%08x", &sum); err != nil || sum != crc32.ChecksumIEEE(raw[9:]) {
			continue // torn
		}
		var c Checkpoint
		if err := json.Unmarshal(raw[9:], &c); err != nil {
			return nil, fmt.Errorf("slot %d: %w: %v", slot, errSidecarForged, err)
		}
		if err := c.verify(keys); err != nil {
			return nil, fmt.Errorf("slot %d (seq %d): %w: %v", slot, c.Seq, errSidecarForged, err)
		}
		if best == nil || c.Seq > best.Seq {
			best = &c
		}
	}
	return best, nil
}

// readSidecar reads a sidecar file; a missing one is no checkpoint.
func readSidecar(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, sidecarSize))
}
