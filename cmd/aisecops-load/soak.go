package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

type soakOptions struct {
	aisecops string
	duration time.Duration
	rate     float64
	lanes    int
	steps    int
	kills    int
	down     time.Duration
	timeout  time.Duration
	retries  int
	deadline time.Duration
	json     string
	dir      string
}

func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := soakOptions{}
	fs.StringVar(&o.aisecops, "aisecops", "", "the aisecops binary (default: next to this one, else on PATH)")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load runs")
	fs.Float64Var(&o.rate, "rate", 200, "Checks per second (first attempts), spread over the lanes")
	fs.IntVar(&o.lanes, "lanes", 32, "agents working at once, each on one run at a time; every fourth is the budget-capped agent")
	fs.IntVar(&o.steps, "steps", 20, "steps per run of the generous agent (the capped agent's runs go 10 steps past its budget)")
	fs.IntVar(&o.kills, "kills", 2, "times Redis is SIGKILLed and restarted, evenly spread")
	fs.DurationVar(&o.down, "down", 2*time.Second, "how long Redis stays dead each time")
	fs.DurationVar(&o.timeout, "timeout", time.Second, "deadline of each Check")
	fs.IntVar(&o.retries, "retries", 3, "retries of a Check denied for an internal fault (store_unavailable, deadline, gRPC error), same request id, as a client retrying")
	fs.DurationVar(&o.deadline, "deadline", 0, "fail if the whole soak takes longer (default: duration + 5m)")
	fs.StringVar(&o.json, "json", "", "also write the report as JSON to this file")
	fs.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary one, removed on success)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.rate <= 0 || o.lanes < 1 || o.steps < 1 || o.kills < 0 {
		return errors.New("--rate, --lanes and --steps must be positive")
	}
	if o.deadline == 0 {
		o.deadline = o.duration + 5*time.Minute
	}
	ctx, cancel := context.WithTimeoutCause(ctx, o.deadline, fmt.Errorf("the soak did not finish within --deadline %s", o.deadline))
	defer cancel()
	err := soak(ctx, o, stdout, stderr)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return errors.Join(cause, err)
	}
	return err
}

// outage is one kill and restart of Redis, as the load saw it.
type outage struct {
	Killed      time.Time `json:"killed"`
	Started     time.Time `json:"restarted"` // the new process answered INFO
	Answering   time.Time `json:"answering"` // PING answered PONG: the AOF is loaded
	LastAllow   time.Time `json:"last_allow_before_kill"`
	FirstDeny   time.Time `json:"first_fault_deny_after_kill"`
	FirstAllow  time.Time `json:"first_allow_after_restart"`
	LoadAOF     float64   `json:"aof_load_seconds"`
	AllowResume float64   `json:"seconds_from_answering_to_first_allow"`
}

type soakReport struct {
	Options    map[string]string `json:"options"`
	Sent       int64             `json:"checks_sent"` // first attempts
	Attempts   int64             `json:"attempts"`    // with retries
	Allowed    int64             `json:"allowed"`
	Denials    map[string]int64  `json:"final_denials"`
	Late       int64             `json:"late_sends"` // a lane fell behind the rate
	Outages    []outage          `json:"outages"`
	AuditLines int               `json:"audit_lines"`
	AuditOK    string            `json:"audit_verify"`
	Invariants invariants        `json:"invariants"`
	Failures   []string          `json:"failures"`
}

// retryable denials are internal faults a client would retry; any other
// denial is final.
func retryable(code string) bool {
	return code == "store_unavailable" || code == "deadline_exceeded" || code == "internal_error" || strings.HasPrefix(code, "grpc:")
}

// event is one answered attempt.
type event struct {
	at    time.Time
	allow bool
	code  string
	first bool // the request's first attempt
	final bool // the last attempt of the request
	// decisionID of an allow, and what the request was.
	decisionID, requestID, run, agent string
}

func soak(ctx context.Context, o soakOptions, stdout, stderr io.Writer) (err error) {
	sys, err := startSystem(ctx, systemOptions{aisecops: o.aisecops, dir: o.dir}, stderr)
	if err != nil {
		return err
	}
	keep := true
	defer func() {
		sys.close()
		if !keep && o.dir == "" {
			_ = os.RemoveAll(sys.dir)
		} else {
			fmt.Fprintln(stderr, "kept", sys.dir)
		}
	}()
	clients, closeClients, err := dial(sys.serve.addr("grpc"), 2)
	if err != nil {
		return err
	}
	defer closeClients()
	if err := sys.preflight(ctx, clients[0], loadAgent, cappedAgent); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "soak: %.0f Checks/s over %d lanes for %s; Redis killed %d times for %s\n", o.rate, o.lanes, o.duration, o.kills, o.down)

	rep := soakReport{Denials: map[string]int64{}, Options: map[string]string{
		"duration": o.duration.String(), "rate": strconv.FormatFloat(o.rate, 'g', -1, 64), "lanes": strconv.Itoa(o.lanes),
		"steps": strconv.Itoa(o.steps), "kills": strconv.Itoa(o.kills), "down": o.down.String(), "retries": strconv.Itoa(o.retries),
		"redis": shellJoin(defaultRedisArgs),
	}}
	start := time.Now()
	events := make([][]event, o.lanes)
	late := make([]int64, o.lanes)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	interval := time.Duration(float64(o.lanes) / o.rate * float64(time.Second))
	prefix := fmt.Sprintf("soak-%d", time.Now().UnixNano()%1e9)
	for l := range o.lanes {
		agent, steps := loadAgent, o.steps
		if l%4 == 3 {
			agent, steps = cappedAgent, int(cappedLimits.calls)+10
		}
		w := newRunner(sys.mix, agent, prefix+"-l"+strconv.Itoa(l), steps, l)
		client := clients[l%len(clients)]
		wg.Go(func() {
			next := start.Add(time.Duration(l) * interval / time.Duration(o.lanes))
			for loadCtx.Err() == nil && time.Since(start) < o.duration {
				if d := time.Until(next); d > 0 {
					if !sleepCtx(loadCtx, d) {
						return
					}
				} else if -d > interval {
					late[l]++
					next = time.Now()
				}
				next = next.Add(interval)
				c, err := w.next()
				if err != nil {
					events[l] = append(events[l], event{at: time.Now(), code: "mint:" + err.Error(), first: true, final: true})
					continue
				}
				for attempt := 0; ; attempt++ {
					a := check(loadCtx, client, c.req, o.timeout)
					ev := event{at: time.Now(), allow: a.allowed, code: a.code, first: attempt == 0,
						decisionID: a.decisionID, requestID: c.requestID, run: c.run, agent: c.agent}
					if a.allowed || !retryable(a.code) || attempt == o.retries || loadCtx.Err() != nil {
						ev.final = true
						events[l] = append(events[l], ev)
						break
					}
					events[l] = append(events[l], ev)
					if !sleepCtx(loadCtx, time.Duration(100<<attempt)*time.Millisecond) {
						return
					}
				}
			}
		})
	}

	// Kill Redis evenly through the run, the first at 1/(kills+1) of it.
	for k := range o.kills {
		at := start.Add(o.duration * time.Duration(k+1) / time.Duration(o.kills+1))
		if !sleepCtx(ctx, time.Until(at)) {
			break
		}
		out, err := bounce(ctx, sys, o.down)
		if err != nil {
			stopLoad()
			wg.Wait()
			return err
		}
		fmt.Fprintf(stderr, "soak: Redis killed at +%.1fs, answering again at +%.1fs (AOF loaded in %.2fs)\n",
			out.Killed.Sub(start).Seconds(), out.Answering.Sub(start).Seconds(), out.LoadAOF)
		rep.Outages = append(rep.Outages, out)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "soak: load done after %s; stopping the server to close its audit log\n", time.Since(start).Round(time.Second))

	var all []event
	for l := range events {
		all = append(all, events[l]...)
		rep.Late += late[l]
	}
	slices.SortFunc(all, func(a, b event) int { return a.at.Compare(b.at) })
	var seen []seenAllow
	for _, e := range all {
		rep.Attempts++
		if e.first {
			rep.Sent++
		}
		if !e.final {
			continue
		}
		if e.allow {
			rep.Allowed++
			seen = append(seen, seenAllow{decisionID: e.decisionID, requestID: e.requestID, run: e.run, agent: e.agent})
		} else {
			rep.Denials[e.code]++
		}
	}
	for i := range rep.Outages {
		timeline(&rep.Outages[i], all)
	}

	if err := sys.serve.stop(15 * time.Second); err != nil {
		rep.Failures = append(rep.Failures, err.Error())
	}
	auditPath := filepath.Join(sys.home, "audit.jsonl")
	out, verr := exec.CommandContext(ctx, sys.bin, "audit", "verify", auditPath).CombinedOutput()
	rep.AuditOK = strings.TrimSpace(string(out))
	if verr != nil {
		rep.Failures = append(rep.Failures, fmt.Sprintf("aisecops audit verify: %v: %s", verr, out))
	}
	f, err := os.Open(auditPath)
	if err != nil {
		return err
	}
	recs, err := audit.ReadAll(f)
	f.Close()
	if err != nil {
		return err
	}
	rep.AuditLines = len(recs)
	store, err := riskstore.NewRedis(riskstore.RedisOptions{URL: "redis://" + sys.redis.Addr(), OpTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer store.Close()
	if rep.Invariants, err = checkInvariants(ctx, recs, seen, store, budgets(sys.routes), 8); err != nil {
		return err
	}
	rep.Failures = append(rep.Failures, rep.Invariants.Violations...)
	if rep.Allowed == 0 {
		rep.Failures = append(rep.Failures, "no Check was allowed")
	}
	if rep.Invariants.RunsAtBudget == 0 {
		rep.Failures = append(rep.Failures, "no run reached its budget: the budget invariant was not exercised")
	}
	for i, out := range rep.Outages {
		if out.FirstAllow.IsZero() {
			rep.Failures = append(rep.Failures, fmt.Sprintf("no allow after Redis came back the %d. time", i+1))
		}
	}
	if o.json != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.json, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprint(stdout, soakMarkdown(rep, start))
	if len(rep.Failures) > 0 {
		return fmt.Errorf("soak failed:\n  %s", strings.Join(rep.Failures, "\n  "))
	}
	keep = false
	return nil
}

// bounce SIGKILLs Redis, keeps it dead for down, then starts it again on the
// same port and directory (so from its AOF) and waits until it answers PING.
func bounce(ctx context.Context, sys *system, down time.Duration) (outage, error) {
	out := outage{Killed: time.Now()}
	sys.redis.Kill()
	if !sleepCtx(ctx, down) {
		return out, ctx.Err()
	}
	if err := sys.redis.Restart(); err != nil {
		return out, fmt.Errorf("restart redis: %w", err)
	}
	out.Started = time.Now()
	deadline := out.Started.Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		err := sys.rc.Ping(cctx).Err()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("redis does not answer PING 60s after its restart: %w", err)
		}
		if !sleepCtx(ctx, 2*time.Millisecond) {
			return out, ctx.Err()
		}
	}
	out.Answering = time.Now()
	out.LoadAOF = out.Answering.Sub(out.Started).Seconds()
	return out, nil
}

// timeline fills in what the load saw around an outage: events are sorted by
// when they were answered.
func timeline(out *outage, events []event) {
	for _, e := range events {
		switch {
		case e.at.Before(out.Killed):
			if e.allow {
				out.LastAllow = e.at
			}
		case out.FirstDeny.IsZero() && !e.allow && retryable(e.code):
			out.FirstDeny = e.at
		}
		if out.FirstAllow.IsZero() && e.allow && e.at.After(out.Answering) {
			out.FirstAllow = e.at
		}
	}
	if !out.FirstAllow.IsZero() {
		out.AllowResume = out.FirstAllow.Sub(out.Answering).Seconds()
	}
}

func soakMarkdown(rep soakReport, start time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Soak: %s at %s Checks/s over %s lanes, Redis (%s) SIGKILLed %d times for %s each.\n\n",
		rep.Options["duration"], rep.Options["rate"], rep.Options["lanes"], rep.Options["redis"], len(rep.Outages), rep.Options["down"])
	fmt.Fprintf(&b, "- Checks sent %d (%d attempts with retries), allowed %d, late sends %d\n", rep.Sent, rep.Attempts, rep.Allowed, rep.Late)
	codes := slices.Collect(func(yield func(string) bool) {
		for k := range rep.Denials {
			if !yield(k) {
				return
			}
		}
	})
	slices.SortFunc(codes, func(a, b string) int { return int(rep.Denials[b] - rep.Denials[a]) })
	var ds []string
	for _, c := range codes {
		ds = append(ds, fmt.Sprintf("%s %d", c, rep.Denials[c]))
	}
	fmt.Fprintf(&b, "- final denials: %s\n", strings.Join(ds, ", "))
	for i, o := range rep.Outages {
		rel := func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return fmt.Sprintf("+%.3fs", t.Sub(start).Seconds())
		}
		fmt.Fprintf(&b, "- outage %d: killed %s, last allow before %s, first fault deny %s, restarted %s, answering %s (AOF load %.3fs), first allow %s: **allows resumed %.3fs after Redis answered**\n",
			i+1, rel(o.Killed), rel(o.LastAllow), rel(o.FirstDeny), rel(o.Started), rel(o.Answering), o.LoadAOF, rel(o.FirstAllow), o.AllowResume)
	}
	inv := rep.Invariants
	fmt.Fprintf(&b, "- audit: %d lines, `aisecops audit verify`: %s\n", rep.AuditLines, rep.AuditOK)
	fmt.Fprintf(&b, "- invariants over %d runs, %d request ids: %d allows seen by the load, %d allowed in the audit log (%d answered as duplicates), %d committed debits, %d runs at a budget\n",
		inv.Runs, inv.RequestsChecked, inv.AllowedSeen, inv.AllowedAudited, inv.DuplicateAnswers, inv.CommittedDebits, inv.RunsAtBudget)
	if len(rep.Failures) == 0 {
		b.WriteString("- every invariant holds: no allow without its audit record and committed debit, no request id debited twice, no run over its budget, audit chain intact\n")
	} else {
		b.WriteString("- FAILURES:\n")
		for _, f := range rep.Failures {
			b.WriteString("  - " + f + "\n")
		}
	}
	return b.String()
}
