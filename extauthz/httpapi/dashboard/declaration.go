package dashboard

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/aisecops/aisecops-envoy/internal/secretfile"
)

// Declaration is the section 21.3 declaration of compliance.
type Declaration struct {
	Format         string    `json:"format"` // "aisecops-declaration/v1"
	Specification  string    `json:"specification"`
	System         string    `json:"system"`
	MaturityLevel  int       `json:"maturity_level"`
	LevelName      string    `json:"level_name"`
	CoveragePct    float64   `json:"control_coverage_pct"`
	Controls       []Control `json:"controls"`
	LastEvaluation time.Time `json:"last_evaluation"`
	EvidenceFrom   time.Time `json:"evidence_from"`
	EvidenceTo     time.Time `json:"evidence_to"`
	KnownGaps      []string  `json:"known_gaps"`
	PolicyVersion  string    `json:"policy_version,omitempty"`
	RoutesVersion  string    `json:"routes_version,omitempty"`
}

// SignedDeclaration is the file the dashboard hands out: the declaration's
// exact bytes (base64), an Ed25519 signature over those bytes, and the key
// that made it. Verify with the public key obtained out of band (the file's
// own copy only names it):
//
//	jq -r .payload decl.json | base64 -d > payload.json
//	jq -r .signature decl.json | base64 -d > payload.sig
//	openssl pkeyutl -verify -pubin -inkey declaration-signing-key.pub.pem -rawin -in payload.json -sigfile payload.sig
type SignedDeclaration struct {
	Payload   string `json:"payload"`   // base64 of the declaration JSON
	Signature string `json:"signature"` // base64 Ed25519 signature over the payload bytes
	Algorithm string `json:"alg"`       // "Ed25519"
	KeyID     string `json:"key_id"`    // hex SHA-256 of the public key (SPKI DER), first 16 bytes
	PublicKey string `json:"public_key"`
}

// DeclarationKey is the key that signs declarations.
type DeclarationKey struct {
	priv ed25519.PrivateKey
}

// LoadOrCreateDeclarationKey reads an Ed25519 key (PKCS#8 PEM) at path,
// creating it (0600) and its public half (path without .pem + .pub.pem) if
// absent. Two replicas creating it at once agree on one key: the first
// write wins and the other reads it.
func LoadOrCreateDeclarationKey(path string) (*DeclarationKey, error) {
	k, err := createDeclarationKey(path)
	if errors.Is(err, os.ErrExist) {
		return readDeclarationKey(path)
	}
	return k, err
}

func readDeclarationKey(path string) (*DeclarationKey, error) {
	if b, err := os.ReadFile(path); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("declaration key %s: not PEM", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("declaration key %s: %w", path, err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("declaration key %s: not Ed25519", path)
		}
		return &DeclarationKey{priv: priv}, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("declaration key: %w", err)
	}
	return nil, os.ErrNotExist
}

// createDeclarationKey reads the key at path, or creates it; os.ErrExist
// when another process created it meanwhile.
func createDeclarationKey(path string) (*DeclarationKey, error) {
	if k, err := readDeclarationKey(path); !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	if err := secretfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, err
		}
		return nil, fmt.Errorf("declaration key: %w", err)
	}
	k := &DeclarationKey{priv: priv}
	if err := os.WriteFile(PublicKeyPath(path), k.PublicPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("declaration key: %w", err)
	}
	return k, nil
}

// PublicKeyPath is where the public half of the key at path is written.
func PublicKeyPath(path string) string {
	if len(path) > 4 && path[len(path)-4:] == ".pem" {
		path = path[:len(path)-4]
	}
	return path + ".pub.pem"
}

// NewDeclarationKey wraps priv (tests).
func NewDeclarationKey(priv ed25519.PrivateKey) *DeclarationKey { return &DeclarationKey{priv: priv} }

// PublicPEM is the public key as SPKI PEM, as openssl reads it.
func (k *DeclarationKey) PublicPEM() []byte {
	der, _ := x509.MarshalPKIXPublicKey(k.priv.Public())
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func (k *DeclarationKey) keyID() string {
	der, _ := x509.MarshalPKIXPublicKey(k.priv.Public())
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:16])
}

// Sign signs d.
func (k *DeclarationKey) Sign(d Declaration) (SignedDeclaration, error) {
	payload, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return SignedDeclaration{}, err
	}
	return SignedDeclaration{
		Payload:   base64.StdEncoding.EncodeToString(payload),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(k.priv, payload)),
		Algorithm: "Ed25519", KeyID: k.keyID(), PublicKey: string(k.PublicPEM()),
	}, nil
}

// VerifyDeclaration checks s against pub and returns the declaration.
func VerifyDeclaration(s SignedDeclaration, pub ed25519.PublicKey) (Declaration, error) {
	payload, err := base64.StdEncoding.DecodeString(s.Payload)
	if err != nil {
		return Declaration{}, fmt.Errorf("declaration payload: %w", err)
	}
	sig, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return Declaration{}, fmt.Errorf("declaration signature: %w", err)
	}
	if s.Algorithm != "Ed25519" || !ed25519.Verify(pub, payload, sig) {
		return Declaration{}, errors.New("declaration signature does not verify")
	}
	var d Declaration
	if err := json.Unmarshal(payload, &d); err != nil {
		return Declaration{}, err
	}
	return d, nil
}

// declare makes the declaration of m.
func declare(m Maturity, policy, routes string) Declaration {
	return Declaration{Format: "aisecops-declaration/v1", Specification: "AISecOps v1.0, section 21.3", System: "aisecops-envoy",
		MaturityLevel: m.Level, LevelName: m.LevelName, CoveragePct: m.CoveragePct, Controls: m.Controls,
		LastEvaluation: m.EvaluatedAt, EvidenceFrom: m.From, EvidenceTo: m.To, KnownGaps: m.Gaps,
		PolicyVersion: policy, RoutesVersion: routes}
}

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
