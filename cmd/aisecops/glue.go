package main

import (
	"crypto/sha256"
	"encoding/hex"
)

// contentVersion is a short content hash of a configuration file.
func contentVersion(raw []byte) string {
	s := sha256.Sum256(raw)
	return hex.EncodeToString(s[:])[:12]
}
