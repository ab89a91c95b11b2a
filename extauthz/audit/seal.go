package audit

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/aisecops/aisecops-envoy/internal/secretfile"
)

// Sealed is a value encrypted by a Sealer: AES-256-GCM under the key KeyID
// names. It marshals to JSON as {"key_id","nonce","ciphertext"} (the bytes in
// base64); the plaintext is never in it.
type Sealed struct {
	KeyID      string `json:"key_id"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"` // includes the GCM tag
}

// Sealer seals the values a replay needs (argument and body values) so that
// clear values never reach the audit log, and opens them for a replay.
//
// Its keys are files in one directory, one per key id, each 32 random bytes,
// mode 0600. Key ids are "NNNN-RRRRRRRR" (a sequence number, then random hex
// so that two deployments' keys never share an id); the highest number is the
// active key, which seals; older keys only open. Rotation adds a key file
// (Rotate); replicas that share the directory open values any of them sealed.
//
// Nonces are random (96 bits), so one key must seal fewer than 2^32 values:
// rotate well before that (at 1,000 Checks a second, within a month).
type Sealer struct {
	dir      string
	readOnly bool // LoadSealer: never creates the directory or a key

	mu     sync.RWMutex
	keys   map[string]cipher.AEAD
	active string
}

// SealKeysName is the key ring's directory name in $AISECOPS_HOME.
const SealKeysName = "seal-keys"

var sealKeyName = regexp.MustCompile(`^([0-9]{4,})-[0-9a-f]{8}$`)

// NewSealer loads the key ring in dir (created, mode 0700, with a first key
// when there is none).
func NewSealer(dir string) (*Sealer, error) {
	s := &Sealer{dir: dir}
	if err := s.load(); err != nil {
		return nil, err
	}
	if s.active == "" {
		if _, err := s.Rotate(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// LoadSealer loads the key ring in dir for opening (a replay): unlike
// NewSealer it creates nothing, and fails when dir holds no key.
func LoadSealer(dir string) (*Sealer, error) {
	s := &Sealer{dir: dir, readOnly: true}
	if err := s.load(); err != nil {
		return nil, err
	}
	if s.active == "" {
		return nil, fmt.Errorf("audit: seal keys: no key in %s", dir)
	}
	return s, nil
}

// load reads every key file in the directory.
func (s *Sealer) load() error {
	if !s.readOnly {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return fmt.Errorf("audit: seal keys: %w", err)
		}
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("audit: seal keys: %w", err)
	}
	keys, active, activeN := map[string]cipher.AEAD{}, "", -1
	for _, e := range entries {
		m := sealKeyName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		raw, err := readSecret(filepath.Join(s.dir, e.Name()))
		if err != nil {
			return err
		}
		if len(raw) != chainKeyLen {
			return fmt.Errorf("audit: seal key %s: %d bytes, want %d", e.Name(), len(raw), chainKeyLen)
		}
		block, _ := aes.NewCipher(raw)
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return fmt.Errorf("audit: seal key %s: %w", e.Name(), err)
		}
		keys[e.Name()] = gcm
		// Two replicas rotating at once may both add key N: the greater id
		// wins, so they agree on the active key.
		if n := keySeq(m[0]); n > activeN || n == activeN && e.Name() > active {
			active, activeN = e.Name(), n
		}
	}
	s.mu.Lock()
	s.keys, s.active = keys, active
	s.mu.Unlock()
	return nil
}

// Rotate adds a new key, which becomes the active one, and returns its id.
// Values sealed under older keys still open.
func (s *Sealer) Rotate() (string, error) {
	if s.readOnly {
		return "", errors.New("audit: seal keys loaded read-only")
	}
	if err := s.load(); err != nil {
		return "", err
	}
	n := 0
	if ids := s.KeyIDs(); len(ids) > 0 {
		n = keySeq(ids[len(ids)-1])
	}
	var suffix [4]byte
	rand.Read(suffix[:])
	id := fmt.Sprintf("%04d-%x", n+1, suffix)
	key := make([]byte, chainKeyLen)
	rand.Read(key)
	if err := secretfile.WriteNew(filepath.Join(s.dir, id), key); err != nil {
		return "", fmt.Errorf("audit: seal key: %w", err)
	}
	if err := s.load(); err != nil {
		return "", err
	}
	return id, nil
}

// ActiveKeyID is the id of the key Seal uses.
func (s *Sealer) ActiveKeyID() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.active
}

// Seal encrypts plaintext under the active key. aad is bound to it (the
// decision id, say): Open needs the same aad.
func (s *Sealer) Seal(plaintext, aad []byte) Sealed {
	s.mu.RLock()
	id, gcm := s.active, s.keys[s.active]
	s.mu.RUnlock()
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	return Sealed{KeyID: id, Nonce: nonce, Ciphertext: gcm.Seal(nil, nonce, plaintext, sealAAD(id, aad))}
}

// Open decrypts v, failing if it was altered, was sealed with another aad, or
// names a key not in the ring (after looking for keys other replicas added).
func (s *Sealer) Open(v Sealed, aad []byte) ([]byte, error) {
	s.mu.RLock()
	gcm, ok := s.keys[v.KeyID]
	s.mu.RUnlock()
	if !ok && sealKeyName.MatchString(v.KeyID) {
		if err := s.load(); err != nil {
			return nil, err
		}
		s.mu.RLock()
		gcm, ok = s.keys[v.KeyID]
		s.mu.RUnlock()
	}
	if !ok {
		return nil, fmt.Errorf("audit: open sealed value: unknown key %q", v.KeyID)
	}
	if len(v.Nonce) != gcm.NonceSize() {
		return nil, errors.New("audit: open sealed value: bad nonce")
	}
	out, err := gcm.Open(nil, v.Nonce, v.Ciphertext, sealAAD(v.KeyID, aad))
	if err != nil {
		return nil, fmt.Errorf("audit: open sealed value: %w", err)
	}
	return out, nil
}

// KeyIDs lists the ring's key ids, oldest first.
func (s *Sealer) KeyIDs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]string, 0, len(s.keys))
	for id := range s.keys {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		if c := keySeq(a) - keySeq(b); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return ids
}

func keySeq(id string) int {
	n, _ := strconv.Atoi(sealKeyName.FindStringSubmatch(id)[1])
	return n
}

// sealAAD binds the key id and a domain to the caller's aad.
func sealAAD(keyID string, aad []byte) []byte {
	out := make([]byte, 0, 20+len(keyID)+len(aad))
	out = append(out, "aisecops-seal-v1\x00"...)
	out = append(out, keyID...)
	out = append(out, 0)
	return append(out, aad...)
}
