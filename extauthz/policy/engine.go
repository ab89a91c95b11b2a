// Package policy owns the policy engine: it loads a Rego bundle (the embedded
// one from package policies, or a directory), compiles it once with restricted
// capabilities, evaluates data.aisecops.authz.result for each Check and
// data.aisecops.tokens.result for each token request, and swaps in a new bundle
// atomically on reload. It also exposes the bundle's data the Go
// side needs without Rego (escalation rules, accepted policy versions).
//
// Every failure of evaluation is an error carrying a stable reason code
// (policy_error, policy_timeout, policy_not_ready) together with a deny
// Decision, so a caller that ignores the error still denies. It must not decide
// anything itself: no thresholds, no allow lists; those live in the bundle.
// It must not reach the network, the clock or randomness from Rego: those
// builtins are removed, so a decision is a function of input and bundle only and
// an audit record replays to the same decision.
package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/policies"
)

// Query is the query the engine evaluates for each Check.
const Query = "data.aisecops.authz.result"

// Options configure an Engine.
type Options struct {
	// Dir is a bundle directory; empty means the bundle embedded in the binary.
	Dir string
	// Logger receives reload outcomes; nil discards.
	Logger *slog.Logger
	// Registerer, when set, receives aisecops_policy_reloads_total{result} and
	// aisecops_policy_info{version}.
	Registerer prometheus.Registerer
}

// Engine evaluates the authorization policy. It is safe for concurrent use.
type Engine struct {
	fsys   fs.FS
	source string // for logs: the directory or "embedded"
	log    *slog.Logger

	cur atomic.Pointer[Bundle]

	reloadMu sync.Mutex // serialises Reload and Watch
	seenKey  string     // content hash (or read error) of the last load attempt

	reloads *prometheus.CounterVec
	info    *prometheus.GaugeVec

	onChange atomic.Pointer[func(from, to *Bundle)]
}

// OnChange sets f to be told of every new bundle that takes the place of
// another of different content (for the audit log). f runs on the reloading
// goroutine, after the swap, one reload at a time.
func (e *Engine) OnChange(f func(from, to *Bundle)) { e.onChange.Store(&f) }

// New loads and compiles the bundle. If that fails it still returns a usable
// *Engine, not Ready, whose every Eval denies with policy_not_ready, together
// with the error: the server can then start, report not-ready, deny every Check,
// and pick the bundle up once Watch or Reload finds a good one. Callers that
// prefer to refuse to start simply treat the error as fatal. An error
// registering metrics is returned with a nil *Engine.
func New(ctx context.Context, opts Options) (*Engine, error) {
	e := &Engine{
		log: opts.Logger,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aisecops_policy_reloads_total",
			Help: "Policy bundle loads by result (success, failure).",
		}, []string{"result"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "aisecops_policy_info",
			Help: "The policy bundle version being served (value 1).",
		}, []string{"version"}),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if opts.Dir == "" {
		e.fsys, e.source = policies.FS(), "embedded"
	} else {
		e.fsys, e.source = os.DirFS(opts.Dir), opts.Dir
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{e.reloads, e.info} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("policy: register metrics: %w", err)
			}
		}
	}
	// Both series exist from the start so a rate() over them is defined.
	e.reloads.WithLabelValues("success")
	e.reloads.WithLabelValues("failure")
	return e, e.Reload(ctx)
}

// Reload loads, compiles and prepares the bundle, then swaps it in. On failure
// the last good bundle keeps serving; the failure is logged, counted and
// returned.
func (e *Engine) Reload(ctx context.Context) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	return e.reloadLocked(ctx)
}

func (e *Engine) reloadLocked(ctx context.Context) error {
	start := time.Now()
	c, key, err := load(ctx, e.fsys)
	e.seenKey = key
	if err != nil {
		e.reloads.WithLabelValues("failure").Inc()
		serving := ""
		if old := e.cur.Load(); old != nil {
			serving = old.version
		}
		e.log.Error("policy bundle rejected", "source", e.source, "serving_version", serving, "error", err)
		return fmt.Errorf("policy: load %s: %w", e.source, err)
	}
	old := e.cur.Swap(c)
	e.reloads.WithLabelValues("success").Inc()
	if old != nil && old.version != c.version {
		e.info.DeleteLabelValues(old.version)
	}
	e.info.WithLabelValues(c.version).Set(1)
	e.log.Info("policy bundle loaded", "source", e.source, "version", c.version, "hash", c.hash, "took", time.Since(start))
	if f := e.onChange.Load(); f != nil && old != nil && old.hash != c.hash {
		(*f)(old, c)
	}
	return nil
}

// Watch polls the bundle's content hash every interval and reloads when it
// changes, until ctx is done. A bundle that failed to load is not retried until
// its content changes again, so a broken file is logged and counted once. The
// embedded bundle never changes: Watch then only waits for ctx.
func (e *Engine) Watch(ctx context.Context, interval time.Duration) {
	if e.source == "embedded" || interval <= 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.reloadIfChanged(ctx)
	}
}

func (e *Engine) reloadIfChanged(ctx context.Context) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	_, key, err := readBundleFiles(e.fsys)
	if err != nil {
		key = "error: " + err.Error()
	}
	if key == e.seenKey {
		return
	}
	_ = e.reloadLocked(ctx) // logged and counted there
}

// Ready reports whether a bundle is loaded.
func (e *Engine) Ready() bool { return e.cur.Load() != nil }

// Current is the serving bundle, or nil when none is loaded. A caller that
// needs several of its answers (a decision, the escalation rules, the
// version) takes it once and asks it, so all come from one bundle.
func (e *Engine) Current() *Bundle { return e.cur.Load() }

// Version is the serving bundle's version; "" when not ready.
func (e *Engine) Version() string { return e.Current().Version() }

// Hash is the serving bundle's content hash; "" when not ready.
func (e *Engine) Hash() string { return e.Current().Hash() }

// AcceptedPolicyVersions is the serving bundle's accepted policy versions.
func (e *Engine) AcceptedPolicyVersions() []string { return e.Current().AcceptedPolicyVersions() }

// Eval evaluates the serving bundle (Bundle.Eval).
func (e *Engine) Eval(ctx context.Context, in *Input) (Decision, error) {
	return e.Current().Eval(ctx, in)
}

// Version is data.aisecops.policy_version of the bundle, or its content hash
// when the bundle names no version; "" for a nil Bundle.
func (c *Bundle) Version() string {
	if c == nil {
		return ""
	}
	return c.version
}

// Hash is the content hash of the bundle ("sha256:…"); "" for a nil Bundle.
func (c *Bundle) Hash() string {
	if c == nil {
		return ""
	}
	return c.hash
}

// Escalation returns the bundle's escalation rules (data.aisecops.escalation).
//
// The slice is shared by every caller and must not be modified: a reload
// publishes a new Bundle rather than changing this one.
func (c *Bundle) Escalation() []EscalationRule {
	if c == nil {
		return nil
	}
	return c.escalation
}

// AcceptedPolicyVersions returns data.aisecops.accepted_policy_versions.
func (c *Bundle) AcceptedPolicyVersions() []string {
	if c == nil {
		return nil
	}
	return append([]string(nil), c.accepted...)
}

// Eval evaluates the policy for one Check. On any failure it returns a deny
// Decision carrying the failure's code and a *reason.Error: PolicyNotReady
// for a nil Bundle, PolicyTimeout when ctx ends first, PolicyError for an
// undefined, conflicting, erroring or ill-shaped result. It never panics.
func (c *Bundle) Eval(ctx context.Context, in *Input) (d Decision, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = reason.Wrap(reason.PolicyError, fmt.Errorf("panic: %v", r), "policy evaluation failed")
		}
		if err != nil {
			d = denyFor(err)
		}
	}()
	if c == nil {
		return Decision{}, reason.New(reason.PolicyNotReady, "policy not loaded")
	}
	if in == nil {
		return Decision{}, reason.New(reason.PolicyError, "no policy input")
	}
	// The facts the rules test are always derived here, never trusted from
	// the caller: a caller that forgot them would otherwise silently disable
	// the rules that read them.
	in.Derive()
	var w *want // everything
	if c.cache != nil {
		w = c.cache.want // what the key reads; the whole input only on a miss
	}
	v, err := inputValueFor(in, c.readsArgs, w)
	if err != nil {
		return Decision{}, reason.Wrap(reason.PolicyError, err, "policy input invalid")
	}
	if c.cache == nil {
		return c.eval(ctx, rego.EvalParsedInput(v))
	}
	key := c.cache.key(v)
	if d, ok := c.cache.get(key); ok {
		return d, nil
	}
	if v, err = inputValue(in, c.readsArgs); err != nil {
		return Decision{}, reason.Wrap(reason.PolicyError, err, "policy input invalid")
	}
	d, err = c.eval(ctx, rego.EvalParsedInput(v))
	// The whole input's key must be the partial one's (by construction);
	// were it not, nothing is cached rather than a decision under a key
	// that another input could share.
	if err == nil && c.cache.key(v) == key {
		c.cache.put(key, d)
	}
	return d, err
}

func (c *Bundle) eval(ctx context.Context, input rego.EvalOption) (Decision, error) {
	rs, err := run(ctx, c.query, input)
	if err != nil {
		return Decision{}, err
	}
	return decodeResult(rs)
}

// run evaluates one prepared query under ctx's deadline. Its errors carry
// PolicyTimeout (ctx ended first) or PolicyError (the evaluation failed);
// checking the shape of the result set is the caller's job.
func run(ctx context.Context, q rego.PreparedEvalQuery, input rego.EvalOption) (rego.ResultSet, error) {
	if err := ctx.Err(); err != nil {
		return nil, reason.Wrap(reason.PolicyTimeout, err, "policy evaluation timed out")
	}
	opts := []rego.EvalOption{input}
	if ctx.Done() != nil {
		// OPA otherwise starts a goroutine per evaluation to watch ctx;
		// AfterFunc costs a registration and starts one only if ctx ends.
		cancel := topdown.NewCancel()
		stop := context.AfterFunc(ctx, cancel.Cancel)
		defer stop()
		opts = append(opts, rego.EvalExternalCancel(cancel))
	}
	rs, err := q.Eval(ctx, opts...)
	if err != nil {
		if topdown.IsCancel(err) || ctx.Err() != nil {
			return nil, reason.Wrap(reason.PolicyTimeout, err, "policy evaluation timed out")
		}
		return nil, reason.Wrap(reason.PolicyError, err, "policy evaluation failed")
	}
	return rs, nil
}

// denyFor is the Decision returned with err, so a caller that drops the error
// still denies with the right code.
func denyFor(err error) Decision {
	code := reason.CodeOf(err)
	msg := "policy evaluation failed"
	var re *reason.Error
	if errors.As(err, &re) {
		msg = re.Message
	}
	return Decision{Decision: Deny, Reasons: []Reason{{Code: string(code), Message: msg}}}
}

// EscalationRule is one rule of data.aisecops.escalation, read by the risk
// calculator; it is the calculator's own type, so the server hands
// the loaded rules over without converting them on every Check.
type EscalationRule = risk.EscalationRule
