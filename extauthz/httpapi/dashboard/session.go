package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
)

// Cookie names. The session cookie carries only a random id; the login
// cookie is the pre-session half of the sign-in form's double-submit token.
const (
	SessionCookie = "aisecops_session"
	loginCookie   = "aisecops_login"
	// CSRFHeader carries a session's CSRF token on state changes made by
	// script; forms carry it as the csrfField field.
	CSRFHeader = "X-CSRF-Token"
	csrfField  = "csrf_token"
)

// SessionOptions bound the session store.
type SessionOptions struct {
	Idle     time.Duration // a session unused this long ends (default 30m)
	Absolute time.Duration // a session ends this long after sign-in, used or not (default 12h)
	Max      int           // sessions kept at once; the oldest is ended for a new one (default 1024)
}

func (o SessionOptions) withDefaults() SessionOptions {
	if o.Idle <= 0 {
		o.Idle = 30 * time.Minute
	}
	if o.Absolute <= 0 {
		o.Absolute = 12 * time.Hour
	}
	if o.Max <= 0 {
		o.Max = 1024
	}
	return o
}

// session is one signed-in browser. The store keys it by the SHA-256 of its
// id, so the map holds nothing a cookie could be rebuilt from.
type session struct {
	caller  httpapi.Caller
	csrf    string
	created time.Time
	used    time.Time
}

// Sessions is the server-side session store: random ids, idle and absolute
// expiry, a bounded count. It implements httpapi.Sessions.
type Sessions struct {
	opts SessionOptions
	mu   sync.Mutex
	m    map[[32]byte]*session
}

var _ httpapi.Sessions = (*Sessions)(nil)

// NewSessions makes an empty store.
func NewSessions(o SessionOptions) *Sessions {
	return &Sessions{opts: o.withDefaults(), m: map[[32]byte]*session{}}
}

// randomToken is 32 random bytes, base64url.
func randomToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("dashboard: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Create starts a session for c and returns its id and CSRF token.
func (s *Sessions) Create(c httpapi.Caller, now time.Time) (id, csrf string) {
	id, csrf = randomToken(), randomToken()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	for len(s.m) >= s.opts.Max {
		var oldest [32]byte
		first := true
		var at time.Time
		for k, v := range s.m {
			if first || v.created.Before(at) {
				oldest, at, first = k, v.created, false
			}
		}
		delete(s.m, oldest)
	}
	s.m[sha256.Sum256([]byte(id))] = &session{caller: httpapi.Caller{Name: c.Name, Roles: slices.Clone(c.Roles)}, csrf: csrf, created: now, used: now}
	return id, csrf
}

func (s *Sessions) expireLocked(now time.Time) {
	for k, v := range s.m {
		if s.expired(v, now) {
			delete(s.m, k)
		}
	}
}

func (s *Sessions) expired(v *session, now time.Time) bool {
	return now.Sub(v.used) >= s.opts.Idle || now.Sub(v.created) >= s.opts.Absolute
}

// lookup returns the live session of id, marking it used.
func (s *Sessions) lookup(id string, now time.Time) (session, bool) {
	if id == "" || len(id) > 128 {
		return session{}, false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	if !ok {
		return session{}, false
	}
	if s.expired(v, now) {
		delete(s.m, k)
		return session{}, false
	}
	v.used = now
	return *v, true
}

// End ends the session of id.
func (s *Sessions) End(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, sha256.Sum256([]byte(id)))
}

// Len is the number of sessions held (expired ones included until swept).
func (s *Sessions) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// SessionCaller implements httpapi.Sessions: the caller of r's session
// cookie, and whether r carries the session's CSRF token (header, or form
// field of a form post).
func (s *Sessions) SessionCaller(r *http.Request, now time.Time) (httpapi.Caller, bool, bool) {
	ck, err := r.Cookie(SessionCookie)
	if err != nil {
		return httpapi.Caller{}, false, false
	}
	v, ok := s.lookup(ck.Value, now)
	if !ok {
		return httpapi.Caller{}, false, false
	}
	return v.caller, sameToken(requestCSRF(r), v.csrf), true
}

// csrfOf is the CSRF token of r's session ("" without one).
func (s *Sessions) csrfOf(r *http.Request, now time.Time) string {
	ck, err := r.Cookie(SessionCookie)
	if err != nil {
		return ""
	}
	v, ok := s.lookup(ck.Value, now)
	if !ok {
		return ""
	}
	return v.csrf
}

// requestCSRF is the CSRF token r carries: the header, else the field of a
// urlencoded form (read within maxForm).
func requestCSRF(r *http.Request) string {
	if h := r.Header.Get(CSRFHeader); h != "" {
		return h
	}
	if r.Method == http.MethodPost && r.Header.Get("Content-Type") == "application/x-www-form-urlencoded" {
		r.Body = http.MaxBytesReader(nil, r.Body, maxForm)
		if err := r.ParseForm(); err == nil {
			return r.PostForm.Get(csrfField)
		}
	}
	return ""
}

// maxForm bounds a form body the dashboard reads.
const maxForm = 16 << 10

func sameToken(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// cookie is a dashboard cookie: HttpOnly, SameSite=Strict, Secure when the
// request came over TLS (the dashboard also serves plain HTTP on loopback,
// where a Secure cookie would not be sent back).
func cookie(r *http.Request, name, value string, maxAge time.Duration) *http.Cookie {
	c := &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
	if maxAge < 0 {
		c.MaxAge = -1
	} else {
		c.MaxAge = int(maxAge / time.Second)
	}
	return c
}
