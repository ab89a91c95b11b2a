package capability

import (
	"crypto"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/golang-jwt/jwt/v5"

	"github.com/aisecops/aisecops-envoy/internal/secretfile"
)

// Signer signs capability tokens (the development key, the token service).
type Signer interface {
	Sign(claims *Claims) (string, error)
	KeyID() string
	Public() crypto.PublicKey
	Alg() string
}

// keySigner signs with an in-memory private key of one of the three algorithms.
type keySigner struct {
	priv   crypto.PrivateKey
	pub    crypto.PublicKey
	method jwt.SigningMethod
	alg    string
	kid    string
	header string // base64url of the fixed JOSE header
}

var _ Signer = (*keySigner)(nil)

// kidLen is how much of the RFC 7638 thumbprint makes a kid: 96 bits, ample to
// tell a handful of keys apart and short enough to read in a log.
const kidLen = 16

// NewSigner returns a Signer for an Ed25519, ECDSA P-256 or RSA (2048-8192 bits)
// private key. An empty kid is derived from the public key's RFC 7638 thumbprint.
func NewSigner(priv crypto.PrivateKey, kid string) (Signer, error) {
	cs, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("capability: unsupported private key type %T", priv)
	}
	pub := cs.Public()
	alg, err := algForKey(pub)
	if err != nil {
		return nil, err
	}
	if kid == "" {
		tp, err := Thumbprint(pub)
		if err != nil {
			return nil, err
		}
		kid = tp[:kidLen]
	}
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{alg, kid, "JWT"})
	if err != nil {
		return nil, err
	}
	return &keySigner{
		priv:   priv,
		pub:    pub,
		method: methods[alg],
		alg:    alg,
		kid:    kid,
		header: b64.EncodeToString(hdr),
	}, nil
}

func (s *keySigner) KeyID() string            { return s.kid }
func (s *keySigner) Public() crypto.PublicKey { return s.pub }
func (s *keySigner) Alg() string              { return s.alg }

// Sign writes claims as a compact JWS. It signs what it is given; Mint is the
// place that decides what a token grants.
func (s *keySigner) Sign(claims *Claims) (string, error) {
	if claims == nil {
		return "", errors.New("capability: sign: nil claims")
	}
	payload, err := json.Marshal(toWire(claims))
	if err != nil {
		return "", fmt.Errorf("capability: sign: %w", err)
	}
	input := s.header + "." + b64.EncodeToString(payload)
	sig, err := s.method.Sign(input, s.priv)
	if err != nil {
		return "", fmt.Errorf("capability: sign: %w", err)
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// maxKeyFileBytes bounds a PEM key file: an 8192-bit RSA key is about 6.5 KiB.
const maxKeyFileBytes = 64 << 10

// LoadSignerFile loads a PEM private key: PKCS#8 ("PRIVATE KEY") of any of the
// three types, SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY").
func LoadSignerFile(path string) (Signer, error) {
	data, err := readBounded(path, maxKeyFileBytes)
	if err != nil {
		return nil, err
	}
	priv, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("capability: key file %s: %w", path, err)
	}
	s, err := NewSigner(priv, "")
	if err != nil {
		return nil, fmt.Errorf("capability: key file %s: %w", path, err)
	}
	return s, nil
}

func parsePrivateKeyPEM(data []byte) (crypto.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	switch block.Type {
	case "PRIVATE KEY":
		return x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		if k.Curve != elliptic.P256() {
			return nil, errors.New("only P-256 EC keys are supported")
		}
		return k, nil
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("capability: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("capability: %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("capability: %s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// LoadOrCreateDevKey loads the development signing key at path, or creates an
// Ed25519 key there (PKCS#8 PEM, mode 0600, parent directories 0700) and reports
// created. An existing key readable by group or others is refused, as ssh does:
// anyone who can read it can mint tokens.
func LoadOrCreateDevKey(path string) (s Signer, created bool, err error) {
	st, err := os.Stat(path)
	switch {
	case err == nil:
		if st.Mode().Perm()&0o077 != 0 {
			return nil, false, fmt.Errorf("capability: dev key %s is accessible by others (mode %v); chmod 600 it", path, st.Mode().Perm())
		}
		s, err := LoadSignerFile(path)
		return s, false, err
	case !errors.Is(err, os.ErrNotExist):
		return nil, false, fmt.Errorf("capability: dev key: %w", err)
	}

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("capability: dev key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("capability: dev key: %w", err)
	}
	if err := secretfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		if errors.Is(err, os.ErrExist) {
			// Another process created it first: use theirs, so both agree.
			s, err := LoadSignerFile(path)
			return s, false, err
		}
		return nil, false, fmt.Errorf("capability: dev key: %w", err)
	}
	s, err = NewSigner(priv, "")
	return s, err == nil, err
}

// PublicJWKS is the JWK Set of the signers' public keys, for publishing
// (GET /.well-known/jwks.json) or writing to a verifier's JWKS file.
func PublicJWKS(signers ...Signer) ([]byte, error) {
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	seen := make(map[string]bool, len(signers))
	for _, s := range signers {
		if seen[s.KeyID()] {
			return nil, fmt.Errorf("capability: jwks: kid %q appears twice", s.KeyID())
		}
		seen[s.KeyID()] = true
		j, err := jwkFromPublic(s.Public(), s.KeyID(), s.Alg())
		if err != nil {
			return nil, err
		}
		set.Keys = append(set.Keys, j)
	}
	return json.MarshalIndent(set, "", "  ")
}
