package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestSealer(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), SealKeysName)
	s, err := NewSealer(dir)
	if err != nil {
		t.Fatal(err)
	}
	first := s.ActiveKeyID()
	secret := []byte(`{"table":"customers","where":"ssn = '123-45-6789'"}`)
	aad := []byte("decision d-1")
	old := s.Seal(secret, aad)
	if old.KeyID != first {
		t.Fatalf("sealed under %s, active %s", old.KeyID, first)
	}

	// No plaintext, in clear or in any encoding a log reader would try.
	js, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, probe := range []string{"customers", "123-45-6789", "Y3VzdG9tZXJz" /* base64 "customers" */, "ssn"} {
		if bytes.Contains(js, []byte(probe)) {
			t.Fatalf("marshalled form contains %q: %s", probe, js)
		}
	}
	var back Sealed
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}

	second, err := s.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if second == first || s.ActiveKeyID() != second || !strings.HasPrefix(second, "0002-") {
		t.Fatalf("after rotation: active %s (was %s)", s.ActiveKeyID(), first)
	}
	if got := s.Seal(secret, aad); got.KeyID != second {
		t.Fatalf("new values sealed under %s", got.KeyID)
	}
	// A value sealed before the rotation still opens, also in a new process.
	fresh, err := NewSealer(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, sealer := range []*Sealer{s, fresh} {
		got, err := sealer.Open(back, aad)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("open after rotation: %q, %v", got, err)
		}
	}
	if ids := fresh.KeyIDs(); len(ids) != 2 || ids[0] != first || ids[1] != second || fresh.ActiveKeyID() != second {
		t.Fatalf("ring %v active %s", ids, fresh.ActiveKeyID())
	}

	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	tampered := map[string]struct {
		v   Sealed
		aad []byte
	}{
		"wrong aad":          {back, []byte("decision d-2")},
		"no aad":             {back, nil},
		"flipped ciphertext": {Sealed{back.KeyID, back.Nonce, flip(back.Ciphertext, 3)}, aad},
		"flipped tag":        {Sealed{back.KeyID, back.Nonce, flip(back.Ciphertext, len(back.Ciphertext)-1)}, aad},
		"flipped nonce":      {Sealed{back.KeyID, flip(back.Nonce, 0), back.Ciphertext}, aad},
		"other key id":       {Sealed{second, back.Nonce, back.Ciphertext}, aad},
		"unknown key id":     {Sealed{"0099-00000000", back.Nonce, back.Ciphertext}, aad},
		"short nonce":        {Sealed{back.KeyID, back.Nonce[:4], back.Ciphertext}, aad},
	}
	for name, tc := range tampered {
		if got, err := s.Open(tc.v, tc.aad); err == nil {
			t.Errorf("%s: opened to %q", name, got)
		}
	}
}

// TestSealerSeesOtherReplicasKeys: a value sealed by a replica that rotated
// opens on one that loaded the ring before.
func TestSealerSeesOtherReplicasKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, _ := NewSealer(dir)
	b, err := NewSealer(dir)
	if err != nil || a.ActiveKeyID() != b.ActiveKeyID() {
		t.Fatalf("second replica: %v, %s vs %s", err, a.ActiveKeyID(), b.ActiveKeyID())
	}
	b.Rotate()
	v := b.Seal([]byte("x"), nil)
	if got, err := a.Open(v, nil); err != nil || string(got) != "x" {
		t.Fatalf("open: %q %v", got, err)
	}
}

func TestSealKeyFiles(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), SealKeysName)
	s, err := NewSealer(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", st.Mode())
	}
	key := filepath.Join(dir, s.ActiveKeyID())
	st, _ = os.Stat(key)
	if b := readFile(t, key); len(b) != 32 || st.Mode().Perm() != 0o600 {
		t.Fatalf("key %d bytes, mode %v", len(b), st.Mode())
	}
	os.Chmod(key, 0o640)
	if _, err := NewSealer(dir); err == nil {
		t.Fatal("a key readable by the group was accepted")
	}
}

func TestSealConcurrentWithRotate(t *testing.T) {
	t.Parallel()
	s, _ := NewSealer(t.TempDir())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 50 {
				v := s.Seal([]byte{byte(i)}, []byte("aad"))
				if got, err := s.Open(v, []byte("aad")); err != nil || got[0] != byte(i) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 3 {
			if _, err := s.Rotate(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
}

func TestRecordCarriesSealedValue(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	s, _ := NewSealer(filepath.Join(filepath.Dir(path), SealKeysName))
	v := s.Seal([]byte(`{"to":"ceo@example.com"}`), []byte("d1"))
	r := record("d1", 1)
	r.Sealed, r.Input = &v, json.RawMessage(`{"tool": "send_email", "arguments": {"to": {"sealed": "to"}}}`)
	if err := l.Write(r); err != nil {
		t.Fatal(err)
	}
	l.Close()
	data := readFile(t, path)
	if bytes.Contains(data, []byte("ceo@example.com")) {
		t.Fatal("plaintext in the log")
	}
	recs, _ := ReadAll(bytes.NewReader(data))
	got, err := s.Open(*recs[0].Sealed, []byte("d1"))
	if err != nil || string(got) != `{"to":"ceo@example.com"}` || !strings.Contains(string(recs[0].Input), `"send_email"`) {
		t.Fatalf("record: %q %v %s", got, err, recs[0].Input)
	}
	if _, err := VerifyFile(path); err != nil {
		t.Fatal(err)
	}
}
