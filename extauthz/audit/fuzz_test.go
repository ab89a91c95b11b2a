package audit

import (
	"bytes"
	"path/filepath"
	"testing"
)

// fuzzLog writes a small sealed log for the fuzz targets to start from.
func fuzzLog(f *testing.F) (log, sidecar []byte, keys VerifyKeys) {
	path := filepath.Join(f.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{CheckpointEvery: 2})
	if err != nil {
		f.Fatal(err)
	}
	writeN(f, l, "d", 4)
	if _, err := l.Rotate(); err != nil {
		f.Fatal(err)
	}
	writeN(f, l, "e", 2)
	l.Close()
	return readFile(f, path), readFile(f, path+SidecarSuffix), keysOf(f, path)
}

// FuzzVerify: the verifier reads logs and sidecars from disk, which an
// attacker may have written: it must never panic, and what it accepts must
// parse.
func FuzzVerify(f *testing.F) {
	log, sidecar, keys := fuzzLog(f)
	f.Add(log, sidecar)
	f.Add(log, []byte(nil))
	f.Add(log[:len(log)/2], sidecar)
	f.Add([]byte("{}\n"), sidecar[:slotSize])
	f.Add([]byte(`{"event":"log_opened","log_id":"x","prev_hash":"","hash":""}`+"\n"), []byte("00000000 {}"))
	f.Fuzz(func(t *testing.T, log, sidecar []byte) {
		res, err := Verify(bytes.NewReader(log), sidecar, VerifyOptions{Keys: keys})
		if err != nil {
			if _, ok := err.(*VerifyError); !ok {
				t.Fatalf("not a VerifyError: %v", err)
			}
			return
		}
		if _, err := ReadAll(bytes.NewReader(log)); err != nil || res.Files[0].TotalLines == 0 {
			t.Fatalf("verified but unreadable: %v", err)
		}
	})
}

// FuzzOneByteChange: changing any one byte of a sealed log fails verification.
func FuzzOneByteChange(f *testing.F) {
	log, sidecar, keys := fuzzLog(f)
	for _, pos := range []uint32{0, 10, 100, uint32(len(log) / 2), uint32(len(log) - 1), uint32(len(log) - 70)} {
		f.Add(pos, byte('x'))
		f.Add(pos, byte('\n'))
	}
	f.Fuzz(func(t *testing.T, pos uint32, b byte) {
		i := int(pos) % len(log)
		if log[i] == b {
			return
		}
		changed := bytes.Clone(log)
		changed[i] = b
		if _, err := Verify(bytes.NewReader(changed), sidecar, VerifyOptions{Keys: keys}); err == nil {
			t.Fatalf("byte %d changed from %q to %q: still verifies", i, log[i], b)
		}
	})
}
