package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
)

// Roles of the HTTP API. Each endpoint names the role it needs; admin has
// every role.
const (
	// RoleAgent calls the token service only, which authenticates agents by
	// their workload credential itself: no API credential carries it.
	RoleAgent = "agent"
	// RoleOperator reads: approvals, explain, runs, evidence, xDS status, metrics.
	RoleOperator = "operator"
	// RoleApprover approves and rejects approvals.
	RoleApprover = "approver"
	// RoleAdmin does everything, revocations and rollout included.
	RoleAdmin = "admin"
)

// Roles lists the roles a credential may carry.
var Roles = []string{RoleOperator, RoleApprover, RoleAdmin}

// Caller is who an authenticated API request comes from.
type Caller struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
}

// Has reports whether the caller holds role (admin holds every role).
func (c Caller) Has(role string) bool {
	return slices.Contains(c.Roles, role) || slices.Contains(c.Roles, RoleAdmin)
}

type callerKey struct{}

// CallerFrom returns the caller an authenticated request carries.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Authenticator names the caller of a bearer credential. ok is false when the
// credential is not one it knows (the next authenticator is asked); err is a
// credential it knows but refuses.
type Authenticator interface {
	Authenticate(ctx context.Context, bearer string, now time.Time) (c Caller, ok bool, err error)
}

// StaticTokens are bearer tokens known by their SHA-256, each with a name and
// roles: the admin token the embedded default writes, and the entries of an
// --api-credentials file. Comparison is in constant time.
type StaticTokens struct {
	entries []staticEntry
}

type staticEntry struct {
	sum   [32]byte
	who   Caller
	valid bool
}

// Credential is one entry of an API credentials file. Only the token's
// SHA-256 is kept, so the file holds no usable secret.
type Credential struct {
	Name        string   `json:"name"`
	TokenSHA256 string   `json:"token_sha256"`
	Roles       []string `json:"roles"`
}

// NewStaticTokens checks creds, reporting every problem at once.
func NewStaticTokens(creds []Credential) (*StaticTokens, error) {
	st := &StaticTokens{}
	var errs []error
	for i, c := range creds {
		p := fmt.Sprintf("credentials[%d]", i)
		sum, err := hex.DecodeString(c.TokenSHA256)
		if err != nil || len(sum) != sha256.Size {
			errs = append(errs, fmt.Errorf("%s.token_sha256: must be 64 hex digits", p))
		}
		if strings.TrimSpace(c.Name) == "" {
			errs = append(errs, fmt.Errorf("%s.name: is required", p))
		}
		if len(c.Roles) == 0 {
			errs = append(errs, fmt.Errorf("%s.roles: at least one of %s", p, strings.Join(Roles, ", ")))
		}
		for _, r := range c.Roles {
			if !slices.Contains(Roles, r) {
				errs = append(errs, fmt.Errorf("%s.roles: %q is not one of %s", p, r, strings.Join(Roles, ", ")))
			}
		}
		e := staticEntry{who: Caller{Name: c.Name, Roles: slices.Clone(c.Roles)}, valid: len(sum) == sha256.Size}
		copy(e.sum[:], sum)
		st.entries = append(st.entries, e)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return st, nil
}

// LoadCredentials reads an API credentials file: a YAML or JSON list of
// Credential.
func LoadCredentials(path string) ([]Credential, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("api credentials: %w", err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("api credentials %s: %w", path, err)
	}
	var creds []Credential
	dec := json.NewDecoder(strings.NewReader(string(js)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&creds); err != nil {
		return nil, fmt.Errorf("api credentials %s: %w", path, err)
	}
	return creds, nil
}

// TokenSHA256 is the hex SHA-256 of a bearer token, as a credentials file
// stores it.
func TokenSHA256(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Authenticate implements Authenticator.
func (st *StaticTokens) Authenticate(_ context.Context, bearer string, _ time.Time) (Caller, bool, error) {
	sum := sha256.Sum256([]byte(bearer))
	found := -1
	for i := range st.entries {
		if subtle.ConstantTimeCompare(sum[:], st.entries[i].sum[:]) == 1 && st.entries[i].valid {
			found = i
		}
	}
	if found < 0 {
		return Caller{}, false, nil
	}
	return st.entries[found].who, true, nil
}

// OperatorJWTs authenticates operator JWTs of a configured issuer; roles come
// from the token's "roles" claim (capability.OperatorVerifier).
type OperatorJWTs struct {
	Verifier *capability.OperatorVerifier
}

// Authenticate implements Authenticator. Anything that is not a JWT is not
// its credential.
func (o OperatorJWTs) Authenticate(ctx context.Context, bearer string, now time.Time) (Caller, bool, error) {
	if strings.Count(bearer, ".") != 2 {
		return Caller{}, false, nil
	}
	id, err := o.Verifier.Verify(ctx, bearer, now)
	if err != nil {
		return Caller{}, true, err
	}
	var roles []string
	for _, r := range id.Roles {
		if slices.Contains(Roles, r) && !slices.Contains(roles, r) {
			roles = append(roles, r)
		}
	}
	return Caller{Name: id.Subject, Roles: roles}, true, nil
}

// Auth checks the roles of API requests against its authenticators.
type Auth struct {
	Authenticators []Authenticator
	Clock          func() time.Time
	// Sessions, when set, also accepts a browser's session cookie (the
	// dashboard's) on requests that carry no Authorization header. A request
	// authenticated by a session that changes state (any method but GET and
	// HEAD) must also carry the session's CSRF token.
	Sessions Sessions
}

// Sessions authenticates browser sessions: the caller a request's session
// cookie names, and whether the request proves it was written by a page of
// the session (its CSRF token), as a state change must.
type Sessions interface {
	SessionCaller(r *http.Request, now time.Time) (c Caller, csrfOK bool, ok bool)
}

// Authenticate names the caller of a bearer credential with a's
// authenticators (the dashboard's sign-in uses it). ok is false for a
// credential none of them accepts.
func (a *Auth) Authenticate(ctx context.Context, bearer string) (Caller, bool) {
	if bearer == "" || len(bearer) > maxBearer {
		return Caller{}, false
	}
	c, err := a.bearer(ctx, bearer)
	return c, err == nil
}

// maxBearer bounds a bearer credential; longer ones are refused unread.
const maxBearer = 8 << 10

// safeMethod reports methods that change nothing.
func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// Require lets a request through to next only when it carries a bearer
// credential of a caller holding role: 401 without a known credential, 403
// when the caller lacks the role. The caller rides in the request's context.
func (a *Auth) Require(role string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := a.authenticate(r)
		if errors.Is(err, errCSRF) {
			WriteError(w, http.StatusForbidden, "csrf", "a state change from a browser session needs the session's CSRF token (X-CSRF-Token)")
			return
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="aisecops"`)
			WriteError(w, http.StatusUnauthorized, "unauthenticated", "this endpoint needs a credential (Authorization: Bearer …)")
			return
		}
		if !c.Has(role) {
			WriteError(w, http.StatusForbidden, "forbidden", "this endpoint needs the "+role+" role")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

var (
	errNoCredential = errors.New("no credential")
	errCSRF         = errors.New("missing or wrong CSRF token")
)

// Identify names the caller of r as Require does (bearer credential, else
// session cookie), without a role check: the dashboard's pages use it to
// choose between the page and the sign-in redirect.
func (a *Auth) Identify(r *http.Request) (Caller, error) { return a.authenticate(r) }

// IsCSRF reports the error Identify returns for a session request that
// changes state without its CSRF token.
func IsCSRF(err error) bool { return errors.Is(err, errCSRF) }

func (a *Auth) authenticate(r *http.Request) (Caller, error) {
	hs := r.Header.Values("Authorization")
	if len(hs) == 0 && a.Sessions != nil {
		c, csrfOK, ok := a.Sessions.SessionCaller(r, a.now())
		switch {
		case !ok:
			return Caller{}, errNoCredential
		case !csrfOK && !safeMethod(r.Method):
			return Caller{}, errCSRF
		}
		return c, nil
	}
	if len(hs) != 1 {
		return Caller{}, errNoCredential
	}
	scheme, tok, ok := strings.Cut(hs[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" || len(tok) > maxBearer {
		return Caller{}, errNoCredential
	}
	return a.bearer(r.Context(), tok)
}

func (a *Auth) now() time.Time {
	if a.Clock != nil {
		return a.Clock()
	}
	return time.Now()
}

// bearer asks each authenticator in turn about tok.
func (a *Auth) bearer(ctx context.Context, tok string) (Caller, error) {
	now := a.now()
	for _, au := range a.Authenticators {
		c, mine, err := au.Authenticate(ctx, tok, now)
		if !mine {
			continue
		}
		if err != nil {
			return Caller{}, err
		}
		return c, nil
	}
	return Caller{}, errNoCredential
}
