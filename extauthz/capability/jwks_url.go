package capability

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// JWKSURLConfig configures a JWKSURL. Only URL is required.
type JWKSURLConfig struct {
	// URL is the one address keys are fetched from. Nothing in a token can change it.
	URL string
	// Client does the fetching (its transport, TLS roots and redirect policy
	// apply). Default: a new client with no settings but the Timeout.
	Client *http.Client
	// RefreshInterval is how often Run refetches the set. Default 5m.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two fetches caused by unknown
	// kids, so a flood of tokens with random kids costs at most one fetch per
	// interval. Default 30s.
	MinRefreshInterval time.Duration
	// Timeout bounds one fetch. Default 5s.
	Timeout time.Duration
	// MaxBytes caps the response body. Default 1 MiB.
	MaxBytes int64
	// Now is the clock for rate limiting. Default time.Now.
	Now func() time.Time
}

// JWKSURL serves keys fetched from a JWKS URL: refreshed by Run on a timer and,
// at most once per MinRefreshInterval, when a token names an unknown kid. A failed
// fetch keeps the last good set.
type JWKSURL struct {
	cfg JWKSURLConfig
	set atomic.Pointer[keySet]

	// sem serialises fetches; a channel rather than a mutex so waiters honour ctx.
	sem         chan struct{}
	mu          sync.Mutex // guards lastAttempt
	lastAttempt time.Time
}

var (
	_ KeySource    = (*JWKSURL)(nil)
	_ generationer = (*JWKSURL)(nil)
)

// NewJWKSURL checks cfg and fills defaults. It does no I/O: call Refresh (or Run)
// to load keys; until then an unknown kid triggers a rate-limited fetch.
func NewJWKSURL(cfg JWKSURLConfig) (*JWKSURL, error) {
	if cfg.URL == "" {
		return nil, errors.New("capability: jwks url: URL is required")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("capability: jwks url: %q is not an http(s) URL", cfg.URL)
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Minute
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = maxJWKSBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	return &JWKSURL{cfg: cfg, sem: make(chan struct{}, 1)}, nil
}

// Generation implements the optional KeySource half: it changes when the keys do.
func (u *JWKSURL) Generation() uint64 {
	if s := u.set.Load(); s != nil {
		return s.gen
	}
	return 0
}

// Key implements KeySource. An unknown kid causes at most one fetch per
// MinRefreshInterval across all callers; callers that arrive while a fetch runs
// wait for it (bounded by Timeout and their ctx) and then look again.
func (u *JWKSURL) Key(ctx context.Context, kid, alg string) (crypto.PublicKey, error) {
	k, err := u.set.Load().lookup(kid, alg)
	if reason.CodeOf(err) != reason.TokenUnknownKey {
		return k, err
	}
	before := u.set.Load()
	select {
	case u.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, reason.Wrap(reason.TokenUnknownKey, ctx.Err(), "token signed by an unknown key")
	}
	defer func() { <-u.sem }()
	if u.set.Load() == before && u.mayFetch() {
		if ferr := u.fetch(ctx); ferr != nil {
			return nil, reason.Wrap(reason.TokenUnknownKey, ferr, "token signed by an unknown key")
		}
	}
	return u.set.Load().lookup(kid, alg)
}

// mayFetch records an attempt if the rate limit allows one.
func (u *JWKSURL) mayFetch() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.cfg.Now()
	if !u.lastAttempt.IsZero() && now.Sub(u.lastAttempt) < u.cfg.MinRefreshInterval {
		return false
	}
	u.lastAttempt = now
	return true
}

// Refresh fetches the set now, regardless of the unknown-kid rate limit.
func (u *JWKSURL) Refresh(ctx context.Context) error {
	select {
	case u.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-u.sem }()
	u.mu.Lock()
	u.lastAttempt = u.cfg.Now()
	u.mu.Unlock()
	return u.fetch(ctx)
}

// Run refreshes at once and then every RefreshInterval until ctx ends. Fetch
// errors go to onError (may be nil); the last good keys stay in use.
func (u *JWKSURL) Run(ctx context.Context, onError func(error)) error {
	t := time.NewTicker(u.cfg.RefreshInterval)
	defer t.Stop()
	for {
		if err := u.Refresh(ctx); err != nil && onError != nil && ctx.Err() == nil {
			onError(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (u *JWKSURL) fetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.cfg.URL, nil)
	if err != nil {
		return fmt.Errorf("capability: jwks url: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := u.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("capability: jwks url: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("capability: jwks url: status %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, u.cfg.MaxBytes+1))
	if err != nil {
		return fmt.Errorf("capability: jwks url: %w", err)
	}
	if int64(len(data)) > u.cfg.MaxBytes {
		return fmt.Errorf("capability: jwks url: response larger than %d bytes", u.cfg.MaxBytes)
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return err
	}
	return swapKeySet(&u.set, keys)
}
