package audit

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aisecops/aisecops-envoy/internal/secretfile"
)

// Default key file names, looked for in the log's directory (the log's own
// default place is $AISECOPS_HOME, so that is where they land).
const (
	ChainKeyName   = "audit-key"             // 32 random bytes: the HMAC key of the chain
	SigningKeyName = "audit-signing-key.pem" // Ed25519, PKCS#8 PEM: signs checkpoints
)

// DefaultKeyFiles are the chain and signing key files of the log at logPath
// when Options names none: next to the log.
func DefaultKeyFiles(logPath string) (chainKey, signingKey string) {
	dir := filepath.Dir(logPath)
	return filepath.Join(dir, ChainKeyName), filepath.Join(dir, SigningKeyName)
}

// chainKeyLen is the size of the chain key and of each seal key.
const chainKeyLen = 32

// maxKeyFileBytes bounds what is read from a key file.
const maxKeyFileBytes = 16 << 10

// chainKeyID names a chain key without revealing it, so that a verifier given
// the wrong key can say so instead of calling every line edited.
func chainKeyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("aisecops-audit-v1 key id"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// KeyID names a checkpoint signing key: the first 8 bytes of the SHA-256 of
// the public key, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// LoadChainKey reads a chain key file: exactly 32 bytes, not readable by
// group or others.
func LoadChainKey(path string) ([]byte, error) {
	data, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	if len(data) != chainKeyLen {
		return nil, fmt.Errorf("audit: key %s: %d bytes, want %d random bytes", path, len(data), chainKeyLen)
	}
	return data, nil
}

// loadOrCreateChainKey returns the chain key at path, creating it (32 random
// bytes, mode 0600) if it does not exist.
func loadOrCreateChainKey(path string) ([]byte, error) {
	key, err := LoadChainKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return key, err
	}
	key = make([]byte, chainKeyLen)
	rand.Read(key)
	if err := secretfile.WriteNew(path, key); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("audit: create key %s: %w", path, err)
	}
	// Created, or another process created it first: read it back so that both agree.
	return LoadChainKey(path)
}

// LoadSigningKey reads an Ed25519 private key (PKCS#8 PEM, not readable by
// group or others).
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	data, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit: signing key %s: want a PKCS#8 \"PRIVATE KEY\" PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit: signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit: signing key %s: %T, want Ed25519", path, k)
	}
	return priv, nil
}

func loadOrCreateSigningKey(path string) (ed25519.PrivateKey, error) {
	priv, err := LoadSigningKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return priv, err
	}
	_, priv, _ = ed25519.GenerateKey(rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("audit: signing key: %w", err)
	}
	if err := secretfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("audit: create signing key %s: %w", path, err)
	}
	return LoadSigningKey(path)
}

// LoadPublicKey reads the key that checks checkpoints from a PEM file: a
// "PUBLIC KEY" (PKIX; `openssl pkey -in audit-signing-key.pem -pubout` makes
// one) or the signing key itself.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("audit: public key %s: no PEM block", path)
	}
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("audit: public key %s: %w", path, err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("audit: public key %s: %T, want Ed25519", path, k)
		}
		return pub, nil
	case "PRIVATE KEY":
		priv, err := LoadSigningKey(path)
		if err != nil {
			return nil, err
		}
		return priv.Public().(ed25519.PublicKey), nil
	}
	return nil, fmt.Errorf("audit: public key %s: unsupported PEM block %q", path, block.Type)
}

// readSecret reads a key file, refusing one that group or others can read,
// as ssh does: whoever reads the chain key can rebuild the chain.
func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("audit: key %s is accessible by others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	return readBounded(path)
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("audit: key %s: %w", path, err)
	}
	if len(data) > maxKeyFileBytes {
		return nil, fmt.Errorf("audit: key %s: larger than %d bytes", path, maxKeyFileBytes)
	}
	return data, nil
}
