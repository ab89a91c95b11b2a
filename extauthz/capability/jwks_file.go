package capability

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// maxJWKSBytes bounds a JWKS file or response: a real one is a few KiB.
const maxJWKSBytes = 1 << 20

// JWKSFile serves the keys of a JWKS file. Reload (called by the operator's
// reload path, or by Watch when the file's size or modification time changes)
// swaps the whole set at once; a failed reload keeps the last good set.
type JWKSFile struct {
	path string

	mu      sync.Mutex // serialises reloads
	set     atomic.Pointer[keySet]
	lastMod time.Time
	lastLen int64
}

var (
	_ KeySource    = (*JWKSFile)(nil)
	_ generationer = (*JWKSFile)(nil)
)

// NewJWKSFile loads path; a file that cannot be read or parsed is an error.
func NewJWKSFile(path string) (*JWKSFile, error) {
	f := &JWKSFile{path: path}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Key implements KeySource. It never touches the file.
func (f *JWKSFile) Key(_ context.Context, kid, alg string) (crypto.PublicKey, error) {
	return f.set.Load().lookup(kid, alg)
}

// Generation implements the optional KeySource half: it changes when the keys do.
func (f *JWKSFile) Generation() uint64 { return f.set.Load().gen }

// Reload re-reads the file. On error the previous keys stay in use.
func (f *JWKSFile) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *JWKSFile) reloadLocked() error {
	fh, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("capability: jwks file: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("capability: jwks file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(fh, maxJWKSBytes+1))
	if err != nil {
		return fmt.Errorf("capability: jwks file %s: %w", f.path, err)
	}
	if len(data) > maxJWKSBytes {
		return fmt.Errorf("capability: jwks file %s: larger than %d bytes", f.path, maxJWKSBytes)
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	f.lastMod, f.lastLen = st.ModTime(), st.Size()
	return swapKeySet(&f.set, keys)
}

// Watch polls the file's size and modification time every interval and reloads
// it when either changes, until ctx ends. Reload errors go to onError (may be nil)
// and the last good keys stay in use.
func (f *JWKSFile) Watch(ctx context.Context, interval time.Duration, onError func(error)) error {
	if interval <= 0 {
		return errors.New("capability: jwks file: watch interval must be positive")
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := f.ReloadIfChanged(); err != nil && onError != nil {
			onError(err)
		}
	}
}

// ReloadIfChanged reloads the file if its size or modification time differs from
// the last successful load.
func (f *JWKSFile) ReloadIfChanged() error {
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("capability: jwks file: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.ModTime().Equal(f.lastMod) && st.Size() == f.lastLen {
		return nil
	}
	return f.reloadLocked()
}

// swapKeySet installs keys in p, bumping the generation only if the key material
// changed, so a rewrite of the same file does not empty the verified-token cache.
func swapKeySet(p *atomic.Pointer[keySet], keys map[string]publicKey) error {
	next, err := newKeySet(keys)
	if err != nil {
		return err
	}
	prev := p.Load()
	if prev != nil && prev.hash == next.hash {
		return nil
	}
	if prev != nil {
		next.gen = prev.gen + 1
	}
	p.Store(next)
	return nil
}
