package capability

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"time"
)

// wireClaims is a token payload as signed. It differs from Claims in the ways JWT
// demands (NumericDate seconds, aud as string or array) and in telling a missing
// claim from an empty one.
type wireClaims struct {
	Iss           *string      `json:"iss,omitempty"`
	Sub           *string      `json:"sub,omitempty"`
	Aud           audience     `json:"aud,omitempty"`
	Exp           *numericDate `json:"exp,omitempty"`
	Iat           *numericDate `json:"iat,omitempty"`
	Nbf           *numericDate `json:"nbf,omitempty"`
	Jti           string       `json:"jti,omitempty"`
	AgentID       *string      `json:"agent_id,omitempty"`
	Tool          *string      `json:"tool,omitempty"`
	Scope         string       `json:"scope,omitempty"`
	Constraints   *Constraints `json:"constraints,omitempty"`
	RiskScore     float64      `json:"risk_score,omitempty"`
	PolicyVersion string       `json:"policy_version,omitempty"`
	RunID         string       `json:"run_id,omitempty"`
	SingleUse     bool         `json:"single_use,omitempty"`

	// Kubernetes service-account tokens (workload credentials) carry this.
	Kubernetes *kubernetesClaims `json:"kubernetes.io,omitempty"`

	// Roles are an operator credential's HTTP API roles (OperatorVerifier);
	// never read from a capability token or a workload credential.
	Roles []string `json:"roles,omitempty"`
}

type kubernetesClaims struct {
	Namespace      string `json:"namespace"`
	ServiceAccount struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"serviceaccount"`
	Pod *struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"pod,omitempty"`
}

// audience is RFC 7519 "aud": a single string or an array of strings.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = audience{s}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*a = list
	return nil
}

// MarshalJSON writes a single audience as a string, the common form.
func (a audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

func (a audience) contains(s string) bool {
	for _, v := range a {
		if v == s {
			return true
		}
	}
	return false
}

// numericDate is RFC 7519 NumericDate: seconds since the epoch, possibly fractional.
type numericDate struct{ t time.Time }

// maxNumericDate (year 2286 or so) keeps time arithmetic far from overflow.
const maxNumericDate = 9999999999

func (d *numericDate) UnmarshalJSON(b []byte) error {
	s := string(b)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > maxNumericDate {
			return errors.New("date out of range")
		}
		d.t = time.Unix(n, 0).UTC()
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return errors.New("date must be a number of seconds")
	}
	sec, frac := math.Modf(f)
	d.t = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return nil
}

func (d numericDate) MarshalJSON() ([]byte, error) {
	if d.t.Nanosecond() == 0 {
		return strconv.AppendInt(nil, d.t.Unix(), 10), nil
	}
	return strconv.AppendFloat(nil, float64(d.t.UnixNano())/1e9, 'f', -1, 64), nil
}

func dateOf(t time.Time) *numericDate {
	if t.IsZero() {
		return nil
	}
	return &numericDate{t: t}
}

func (d *numericDate) time() time.Time {
	if d == nil {
		return time.Time{}
	}
	return d.t
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// toWire is the payload Sign writes for c.
func toWire(c *Claims) *wireClaims {
	w := &wireClaims{
		Iss:           strPtr(c.Issuer),
		Sub:           strPtr(c.Subject),
		Aud:           audience(c.Audience),
		Exp:           dateOf(c.ExpiresAt),
		Iat:           dateOf(c.IssuedAt),
		Nbf:           dateOf(c.NotBefore),
		Jti:           c.ID,
		AgentID:       strPtr(c.AgentID),
		Tool:          strPtr(c.Tool),
		Scope:         c.Scope,
		RiskScore:     c.RiskScore,
		PolicyVersion: c.PolicyVersion,
		RunID:         c.RunID,
		SingleUse:     c.SingleUse,
	}
	if c.Constraints != (Constraints{}) {
		cons := c.Constraints
		w.Constraints = &cons
	}
	return w
}

// fromWire is the Claims of a verified payload; agent_id defaults to sub.
func fromWire(w *wireClaims) *Claims {
	c := &Claims{
		Issuer:        deref(w.Iss),
		Subject:       deref(w.Sub),
		Audience:      []string(w.Aud),
		ExpiresAt:     w.Exp.time(),
		IssuedAt:      w.Iat.time(),
		NotBefore:     w.Nbf.time(),
		ID:            w.Jti,
		AgentID:       deref(w.AgentID),
		Tool:          deref(w.Tool),
		Scope:         w.Scope,
		RiskScore:     w.RiskScore,
		PolicyVersion: w.PolicyVersion,
		RunID:         w.RunID,
		SingleUse:     w.SingleUse,
	}
	if w.AgentID == nil {
		c.AgentID = c.Subject
	}
	if w.Constraints != nil {
		c.Constraints = *w.Constraints
	}
	return c
}
