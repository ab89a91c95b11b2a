// Package revocation owns the capability-token revocation list (AIS-CAP-01,
// issue "Capability tokens" item 4): tokens revoked one by one (by jti) and all
// tokens of an agent issued before a moment ("revoked before T"). It has two
// layers, merged into one immutable snapshot that Check reads with one atomic
// load: an operator's JSON file (reloaded when its content changes; a bad file
// keeps the last good one) and entries added through the admin API (in memory,
// kept until every token they can match has expired).
//
// It must not verify tokens (the capability package does, before Check is
// called), must not decide anything else about a request, and must not block
// the Check path: Check takes no lock and does no I/O.
package revocation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// Defaults of Options.
const (
	DefaultMaxEntries = 100000
	// maxFileBytes bounds the revocation file: 100k entries fit in a few MiB.
	maxFileBytes = 8 << 20
	// maxIDLen bounds a jti or agent id in the list.
	maxIDLen = 256
	// maxFuture bounds how far ahead an entry's time may lie, so an API entry
	// cannot pin memory indefinitely.
	maxFuture = 24 * time.Hour
)

// Sources of an entry, as GET /v1/revocations reports them.
const (
	SourceFile = "file"
	SourceAPI  = "api"
)

// JTI revokes one token.
type JTI struct {
	JTI string `json:"jti"`
	// ExpiresAt is when the token expires and the entry may be forgotten; zero in
	// the file means "keep it".
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Source    string    `json:"source,omitempty"`
}

// Agent revokes every token of an agent issued before RevokedBefore.
type Agent struct {
	AgentID       string    `json:"agent_id"`
	RevokedBefore time.Time `json:"revoked_before"`
	Source        string    `json:"source,omitempty"`
}

// List is the revocation file's format and GET /v1/revocations' answer.
type List struct {
	JTIs   []JTI   `json:"jtis"`
	Agents []Agent `json:"agents"`
}

// Options configure a Set.
type Options struct {
	// Path is the operator's revocation file (List as JSON); empty means none.
	Path string
	// MaxTokenLifetime is the longest a token the Check path accepts can live
	// (the verifier's MaxLifetime); API entries are kept that long (plus
	// Leeway) past the moment they can last match. Default 15m.
	MaxTokenLifetime time.Duration
	// Leeway is the verifier's clock-skew tolerance. Default 30s.
	Leeway time.Duration
	// MaxEntries bounds the API layer. Default DefaultMaxEntries.
	MaxEntries int
	Clock      func() time.Time
	Logger     *slog.Logger
}

// Set is the revocation list. It is safe for concurrent use.
type Set struct {
	opts Options

	cur atomic.Pointer[snapshot]

	mu       sync.Mutex // serialises writers (API, reloads) and guards the fields below
	file     layer
	api      layer
	seenFile string // content hash (or error) of the last file read, so a bad file is reported once
}

// layer is one source's entries: jti → expiry (zero: none) and agent → the
// moment before which its tokens are revoked.
type layer struct {
	jtis   map[string]time.Time
	agents map[string]time.Time
}

// snapshot is the merged, immutable view Check reads.
type snapshot struct {
	jtis   map[string]struct{}
	agents map[string]time.Time
}

// New returns a Set, loading Options.Path if set; a file that cannot be read or
// parsed is an error, as a missing revocation list must not start as empty.
func New(opts Options) (*Set, error) {
	if opts.MaxTokenLifetime < 0 || opts.Leeway < 0 || opts.MaxEntries < 0 {
		return nil, errors.New("revocation: MaxTokenLifetime, Leeway and MaxEntries must not be negative")
	}
	if opts.MaxTokenLifetime == 0 {
		opts.MaxTokenLifetime = capability.DefaultMaxLifetime
	}
	if opts.Leeway == 0 {
		opts.Leeway = capability.DefaultLeeway
	}
	if opts.MaxEntries == 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Set{opts: opts, file: newLayer(), api: newLayer()}
	s.cur.Store(&snapshot{})
	if opts.Path != "" {
		if err := s.Reload(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func newLayer() layer {
	return layer{jtis: map[string]time.Time{}, agents: map[string]time.Time{}}
}

// Check returns a *reason.Error with code TokenRevoked when c's jti is revoked
// or c was issued before its agent's revocation moment, and nil otherwise. It
// costs an atomic load and at most two map lookups.
func (s *Set) Check(c *capability.Claims) error {
	if c == nil {
		return reason.New(reason.TokenClaims, "token has no claims")
	}
	snap := s.cur.Load()
	if c.ID != "" && len(snap.jtis) > 0 {
		if _, ok := snap.jtis[c.ID]; ok {
			return revoked()
		}
	}
	if len(snap.agents) > 0 {
		// The verifier makes agent_id equal sub; both are looked up anyway so
		// a claims value built some other way cannot slip past.
		if t, ok := snap.agents[c.AgentID]; ok && c.IssuedAt.Before(t) {
			return revoked()
		}
		if c.Subject != c.AgentID {
			if t, ok := snap.agents[c.Subject]; ok && c.IssuedAt.Before(t) {
				return revoked()
			}
		}
	}
	return nil
}

// AgentRevoked reports whether agent has a revocation entry: while it stands
// the token service mints nothing for the agent, so revoking an agent stops
// both the tokens it holds and the ones it would ask for next. (Check still
// judges each token by its issue time, so tokens minted after an entry is
// removed work.)
func (s *Set) AgentRevoked(agent string, _ time.Time) bool {
	_, ok := s.cur.Load().agents[agent]
	return ok
}

func revoked() error { return reason.New(reason.TokenRevoked, "token has been revoked") }

// RevokeJTI revokes the token with this jti. The entry is kept until
// expiresAt or until any token valid now has expired (now + MaxTokenLifetime +
// Leeway), whichever is later: an expiry given too early must not bring the
// token back to life.
func (s *Set) RevokeJTI(jti string, expiresAt time.Time) (JTI, error) {
	now := s.opts.Clock()
	if err := checkID("jti", jti); err != nil {
		return JTI{}, err
	}
	if expiresAt.After(now.Add(maxFuture)) {
		return JTI{}, fmt.Errorf("revocation: expires_at more than %s ahead", maxFuture)
	}
	if floor := now.Add(s.opts.MaxTokenLifetime + s.opts.Leeway); expiresAt.Before(floor) {
		expiresAt = floor
	}
	expiresAt = expiresAt.UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	if _, ok := s.api.jtis[jti]; !ok && s.sizeLocked() >= s.opts.MaxEntries {
		return JTI{}, ErrFull
	}
	if prev, ok := s.api.jtis[jti]; !ok || expiresAt.After(prev) {
		s.api.jtis[jti] = expiresAt
	}
	s.publishLocked()
	s.opts.Logger.Info("token revoked", "jti", jti, "expires_at", expiresAt)
	return JTI{JTI: jti, ExpiresAt: s.api.jtis[jti], Source: SourceAPI}, nil
}

// RevokeAgent revokes every token of agent issued before before (zero: now).
func (s *Set) RevokeAgent(agent string, before time.Time) (Agent, error) {
	now := s.opts.Clock()
	if err := checkID("agent_id", agent); err != nil {
		return Agent{}, err
	}
	if before.IsZero() {
		before = now
	}
	if before.After(now.Add(maxFuture)) {
		return Agent{}, fmt.Errorf("revocation: before more than %s ahead", maxFuture)
	}
	before = before.UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	if _, ok := s.api.agents[agent]; !ok && s.sizeLocked() >= s.opts.MaxEntries {
		return Agent{}, ErrFull
	}
	if prev, ok := s.api.agents[agent]; !ok || before.After(prev) {
		s.api.agents[agent] = before
	}
	s.publishLocked()
	s.opts.Logger.Info("agent tokens revoked", "agent_id", agent, "revoked_before", before)
	return Agent{AgentID: agent, RevokedBefore: s.api.agents[agent], Source: SourceAPI}, nil
}

// ErrFull is returned when the API layer holds MaxEntries unexpired entries.
var ErrFull = errors.New("revocation: list full")

func (s *Set) sizeLocked() int { return len(s.api.jtis) + len(s.api.agents) }

// pruneLocked forgets API jti entries that can no longer match a token the
// Check path accepts. Agent entries stay: they also stop the agent from
// minting, for as long as the service runs (use the file for a revocation
// that outlives a restart, or that is lifted later).
func (s *Set) pruneLocked(now time.Time) {
	for jti, exp := range s.api.jtis {
		if now.After(exp.Add(s.opts.Leeway)) {
			delete(s.api.jtis, jti)
		}
	}
}

// publishLocked merges the layers into a new snapshot and swaps it in.
func (s *Set) publishLocked() {
	next := &snapshot{
		jtis:   make(map[string]struct{}, len(s.file.jtis)+len(s.api.jtis)),
		agents: make(map[string]time.Time, len(s.file.agents)+len(s.api.agents)),
	}
	for _, l := range []*layer{&s.file, &s.api} {
		for jti := range l.jtis {
			next.jtis[jti] = struct{}{}
		}
		for agent, t := range l.agents {
			if prev, ok := next.agents[agent]; !ok || t.After(prev) {
				next.agents[agent] = t
			}
		}
	}
	s.cur.Store(next)
}

// List returns every entry, file entries first, each sorted.
func (s *Set) List() List {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(s.opts.Clock())
	out := List{JTIs: []JTI{}, Agents: []Agent{}}
	for _, src := range []struct {
		l    *layer
		name string
	}{{&s.file, SourceFile}, {&s.api, SourceAPI}} {
		n := len(out.JTIs)
		for jti, exp := range src.l.jtis {
			out.JTIs = append(out.JTIs, JTI{JTI: jti, ExpiresAt: exp, Source: src.name})
		}
		sort.Slice(out.JTIs[n:], func(i, j int) bool { return out.JTIs[n+i].JTI < out.JTIs[n+j].JTI })
		m := len(out.Agents)
		for agent, t := range src.l.agents {
			out.Agents = append(out.Agents, Agent{AgentID: agent, RevokedBefore: t, Source: src.name})
		}
		sort.Slice(out.Agents[m:], func(i, j int) bool { return out.Agents[m+i].AgentID < out.Agents[m+j].AgentID })
	}
	return out
}

// Reload re-reads the file. On error the previous file entries stay in force.
func (s *Set) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, key, err := s.readFile()
	s.seenFile = key
	if err != nil {
		return err
	}
	return s.applyLocked(data)
}

// ReloadIfChanged reloads the file if its content differs from the last read,
// successful or not: a broken file is reported once, not on every poll. The
// file is read and hashed each time rather than trusting its modification
// time, which two quick writes can share.
func (s *Set) ReloadIfChanged() error {
	if s.opts.Path == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, key, err := s.readFile()
	if key == s.seenFile {
		return nil
	}
	s.seenFile = key
	if err != nil {
		return err
	}
	return s.applyLocked(data)
}

// Watch calls ReloadIfChanged every interval until ctx ends. Errors go to
// onError (may be nil); the last good file stays in force.
func (s *Set) Watch(ctx context.Context, interval time.Duration, onError func(error)) error {
	if interval <= 0 {
		return errors.New("revocation: watch interval must be positive")
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := s.ReloadIfChanged(); err != nil && onError != nil {
			onError(err)
		}
	}
}

// readFile returns the file's bytes and a key identifying what was seen.
func (s *Set) readFile() ([]byte, string, error) {
	if s.opts.Path == "" {
		return nil, "", errors.New("revocation: no file configured")
	}
	f, err := os.Open(s.opts.Path)
	if err != nil {
		err = fmt.Errorf("revocation: %w", err)
		return nil, "error: " + err.Error(), err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err == nil && len(data) > maxFileBytes {
		err = fmt.Errorf("larger than %d bytes", maxFileBytes)
	}
	if err != nil {
		err = fmt.Errorf("revocation: %s: %w", s.opts.Path, err)
		return nil, "error: " + err.Error(), err
	}
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:]), nil
}

func (s *Set) applyLocked(data []byte) error {
	l, err := ParseFile(data)
	if err != nil {
		err = fmt.Errorf("revocation: %s: %w", s.opts.Path, err)
		s.opts.Logger.Error("revocation file rejected; keeping the last good one", "path", s.opts.Path, "err", err)
		return err
	}
	next := newLayer()
	for _, e := range l.JTIs {
		// A jti listed twice keeps the later expiry; zero (keep) beats any.
		prev, ok := next.jtis[e.JTI]
		switch {
		case !ok, e.ExpiresAt.IsZero(), !prev.IsZero() && e.ExpiresAt.After(prev):
			next.jtis[e.JTI] = e.ExpiresAt
		}
	}
	for _, e := range l.Agents {
		if prev, ok := next.agents[e.AgentID]; !ok || e.RevokedBefore.After(prev) {
			next.agents[e.AgentID] = e.RevokedBefore
		}
	}
	s.file = next
	s.publishLocked()
	s.opts.Logger.Info("revocation file loaded", "path", s.opts.Path, "jtis", len(next.jtis), "agents", len(next.agents))
	return nil
}

// ParseFile parses a revocation file strictly: unknown fields, trailing data,
// an empty or overlong id, or an agent entry without revoked_before are errors,
// all reported at once. Source fields are not allowed in the file.
func ParseFile(data []byte) (List, error) {
	var l List
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return List{}, err
	}
	if dec.More() {
		return List{}, errors.New("trailing data")
	}
	if _, err := dec.Token(); err != io.EOF {
		return List{}, errors.New("trailing data")
	}
	var errs []error
	for i, e := range l.JTIs {
		if err := checkID(fmt.Sprintf("jtis[%d].jti", i), e.JTI); err != nil {
			errs = append(errs, err)
		}
		if e.Source != "" {
			errs = append(errs, fmt.Errorf("jtis[%d].source: not allowed in the file", i))
		}
	}
	for i, e := range l.Agents {
		if err := checkID(fmt.Sprintf("agents[%d].agent_id", i), e.AgentID); err != nil {
			errs = append(errs, err)
		}
		if e.RevokedBefore.IsZero() {
			errs = append(errs, fmt.Errorf("agents[%d].revoked_before: required", i))
		}
		if e.Source != "" {
			errs = append(errs, fmt.Errorf("agents[%d].source: not allowed in the file", i))
		}
	}
	return l, errors.Join(errs...)
}

func checkID(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s: required", field)
	}
	if len(v) > maxIDLen {
		return fmt.Errorf("%s: longer than %d bytes", field, maxIDLen)
	}
	return nil
}
