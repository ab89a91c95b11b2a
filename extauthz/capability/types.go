package capability

import "time"

// Constraints narrow what a token allows (the token schema of AISecOps v1.0,
// section 5.2).
type Constraints struct {
	MaxRows *int64   `json:"max_rows,omitempty"`
	MaxCost *float64 `json:"max_cost,omitempty"`
	Expiry  string   `json:"expiry,omitempty"` // RFC 3339; the earlier of this and exp applies
}

// Claims are a capability token's verified claims.
type Claims struct {
	Issuer        string      `json:"iss"`
	Subject       string      `json:"sub"`
	Audience      []string    `json:"aud"`
	ExpiresAt     time.Time   `json:"exp"`
	IssuedAt      time.Time   `json:"iat"`
	NotBefore     time.Time   `json:"nbf,omitzero"`
	ID            string      `json:"jti"`
	AgentID       string      `json:"agent_id"`
	Tool          string      `json:"tool"`
	Scope         string      `json:"scope,omitempty"`
	Constraints   Constraints `json:"constraints,omitzero"`
	RiskScore     float64     `json:"risk_score,omitempty"`
	PolicyVersion string      `json:"policy_version"`
	RunID         string      `json:"run_id,omitempty"`
	SingleUse     bool        `json:"single_use,omitempty"`
}
