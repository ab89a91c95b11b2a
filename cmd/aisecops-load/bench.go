package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// The targets at concurrency 32, as ratios to the floor measured in
// the same run.
const (
	targetConc     = 32
	targetCPURatio = 4.5
	targetP99Ratio = 2.5
	targetRedisCPU = 60.0 // µs per Check
	targetRT       = 1.0
)

type benchOptions struct {
	aisecops string
	conc     []int
	steps    []int
	duration time.Duration
	warmup   time.Duration
	timeout  time.Duration
	conns    int
	json     string
	profile  string
	minAllow float64
	dir      string
	aof      bool
	slices   int
	selfProf string
}

// row is one measured row of the table. Per-Check figures divide a delta
// over the row's measured window by the Checks answered in it.
type row struct {
	Target      string  `json:"target"` // "floor" or "aisecops"
	Concurrency int     `json:"concurrency"`
	Steps       int     `json:"steps_per_run,omitempty"`
	Seconds     float64 `json:"seconds"`
	Checks      int64   `json:"checks"`
	RPS         float64 `json:"rps"`
	P50us       float64 `json:"p50_us"`
	P90us       float64 `json:"p90_us"`
	P99us       float64 `json:"p99_us"`
	// ServerCPUus: the server process's utime+stime (/proc/<pid>/stat).
	ServerCPUus float64 `json:"server_cpu_us_per_check"`
	// Redis: used_cpu_sys+used_cpu_user (INFO cpu); round trips are read
	// events on Redis's client sockets (INFO stats total_reads_processed, less
	// the row's own INFO and the server's once-a-second health PING); scripts
	// are EVALSHA+EVAL calls.
	RedisCPUus   *float64 `json:"redis_cpu_us_per_check,omitempty"`
	RedisRT      *float64 `json:"redis_round_trips_per_check,omitempty"`
	RedisScripts *float64 `json:"redis_scripts_per_check,omitempty"`
	AllowedPct   float64  `json:"allowed_pct"`
	TopDenials   []string `json:"top_denials,omitempty"`
	Mix          []string `json:"mix"`
	// LoadCPUus is this tool's own CPU per Check; OtherCores the CPU, in
	// cores, of everything else on the machine during the row (other
	// processes, and kernel work not charged to a process): the noise.
	LoadCPUus  float64  `json:"load_cpu_us_per_check"`
	OtherCores float64  `json:"other_cores"`
	CPUxFloor  *float64 `json:"cpu_x_floor,omitempty"`
	P99xFloor  *float64 `json:"p99_x_floor,omitempty"`
	Profiled   bool     `json:"profiled,omitempty"`
}

type benchReport struct {
	Started     time.Time `json:"started"`
	Machine     string    `json:"machine"`
	GoVersion   string    `json:"go_version"`
	Redis       string    `json:"redis"`
	RowSeconds  float64   `json:"row_seconds"`
	WarmupSecs  float64   `json:"warmup_seconds"`
	Connections int       `json:"connections"`
	Rows        []row     `json:"rows"`
	Profile     *row      `json:"profile_row,omitempty"`
	Targets     []string  `json:"targets"`
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a list of positive integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := benchOptions{}
	fs.StringVar(&o.aisecops, "aisecops", "", "the aisecops binary (default: next to this one, else on PATH)")
	conc := fs.String("concurrency", "1,8,32,64", "concurrencies: Checks in flight at once, one closed-loop worker each")
	steps := fs.String("steps", "1,20,200", "run lengths: each worker's run ids rotate after this many Checks")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per row")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured time before each row")
	fs.IntVar(&o.slices, "slices", 4, "slices of each row: the floor and the server are measured alternately, duration/slices at a time")
	fs.DurationVar(&o.timeout, "timeout", time.Second, "deadline of each Check (Envoy's ext_authz timeout)")
	fs.IntVar(&o.conns, "conns", 2, "gRPC connections to each server (Envoy keeps one per worker thread)")
	fs.StringVar(&o.json, "json", "", "also write the report as JSON to this file (-: to stdout, instead of the table)")
	fs.StringVar(&o.profile, "profile", "", "after the table, profile the server in one more c=32 row: 10s CPU and allocs profiles into this directory")
	fs.Float64Var(&o.minAllow, "min-allowed", 90, "fail when a row of the real server allows fewer than this percentage of Checks (every denial is listed under the table)")
	fs.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary one, removed on success)")
	fs.StringVar(&o.selfProf, "cpuprofile", "", "write this tool's own CPU profile here (what the load costs the machine)")
	fs.BoolVar(&o.aof, "redis-aof", true, "run Redis with its append-only file (fsync every second), as the soak must; false: no persistence at all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.conc, err = intList(*conc); err != nil {
		return fmt.Errorf("--concurrency: %w", err)
	}
	if o.steps, err = intList(*steps); err != nil {
		return fmt.Errorf("--steps: %w", err)
	}
	if o.profile != "" && o.duration+o.warmup < 12*time.Second {
		// The profile row runs long enough for a 10 s profile whatever --duration says.
		fmt.Fprintln(stderr, "note: the profile row runs 12s, longer than --duration")
	}
	if o.selfProf != "" {
		f, err := os.Create(o.selfProf)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return bench(ctx, o, stdout, stderr)
}

func bench(ctx context.Context, o benchOptions, stdout, stderr io.Writer) (err error) {
	rep := benchReport{Started: time.Now().UTC(), Machine: machine(), GoVersion: runtime.Version(),
		RowSeconds: o.duration.Seconds(), WarmupSecs: o.warmup.Seconds(), Connections: o.conns}
	redisArgs := defaultRedisArgs
	if !o.aof {
		redisArgs = []string{"--appendonly", "no", "--save", ""}
	}
	sys, err := startSystem(ctx, systemOptions{aisecops: o.aisecops, dir: o.dir, floor: true, pprof: o.profile != "", redisArgs: redisArgs, volatile: !o.aof}, stderr)
	if err != nil {
		return err
	}
	defer func() {
		sys.close()
		if err == nil && o.dir == "" {
			_ = os.RemoveAll(sys.dir)
		} else {
			fmt.Fprintln(stderr, "kept", sys.dir)
		}
	}()
	if v, err := sys.rc.Info(ctx, "server").Result(); err == nil {
		for line := range strings.SplitSeq(v, "\n") {
			if s, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				rep.Redis = "redis " + s + " " + shellJoin(redisArgs)
			}
		}
	}
	real, closeReal, err := dial(sys.serve.addr("grpc"), o.conns)
	if err != nil {
		return err
	}
	defer closeReal()
	floor, closeFloor, err := dial(sys.noop.addr("grpc"), o.conns)
	if err != nil {
		return err
	}
	defer closeFloor()
	if err := sys.preflight(ctx, real[0], loadAgent); err != nil {
		return err
	}
	var lowAllowed []string
	// Floor and server interleaved in slices within each row: on a shared,
	// noisy machine (a neighbour's burst lasts seconds) both then see the
	// same noise, and a row's ratios are to the floor slices taken between
	// its own. The floor row shown is all of a concurrency's floor slices.
	for _, c := range o.conc {
		var floorAll sample
		var rows []row
		for _, s := range o.steps {
			fs, rs, err := interleave(ctx, sys, floor, real, c, s, o)
			if err != nil {
				return err
			}
			floorAll.add(fs)
			f, err := fs.row("floor", c, 1, false)
			if err != nil {
				return err
			}
			r, err := rs.row("aisecops", c, s, false)
			if err != nil {
				return err
			}
			r.ratios(f)
			fmt.Fprintln(stderr, f.progress())
			fmt.Fprintln(stderr, r.progress())
			rows = append(rows, r)
			if r.AllowedPct < o.minAllow {
				lowAllowed = append(lowAllowed, fmt.Sprintf("c=%d steps=%d allowed %.2f%% (< %.0f%%); top denials: %s",
					c, s, r.AllowedPct, o.minAllow, strings.Join(r.TopDenials, ", ")))
			}
		}
		f, err := floorAll.row("floor", c, 1, false)
		if err != nil {
			return err
		}
		rep.Rows = append(append(rep.Rows, f), rows...)
	}
	if o.profile != "" {
		p, err := profileRow(ctx, sys, real, o, stderr)
		if err != nil {
			return err
		}
		for _, f := range rep.Rows {
			if f.Target == "floor" && f.Concurrency == p.Concurrency {
				p.ratios(f)
			}
		}
		rep.Profile = &p
	}
	rep.Targets = targets(rep.Rows)
	if err := writeReport(rep, o.json, stdout); err != nil {
		return err
	}
	if len(lowAllowed) > 0 {
		return fmt.Errorf("the load was denied for the wrong reasons, so these rows do not measure the allow path:\n  %s", strings.Join(lowAllowed, "\n  "))
	}
	return nil
}

// interleave measures one row of the server and the floor beside it: in
// o.slices slices each, alternately, the first after o.warmup and the
// others after a short re-warming (the closed loop's ramp after a switch).
func interleave(ctx context.Context, sys *system, floor, real []envoy_service_auth_v3.AuthorizationClient,
	conc, steps int, o benchOptions) (fs, rs sample, err error) {
	n := max(o.slices, 1)
	slice := o.duration / time.Duration(n)
	fgens, rgens := newGens(sys, "floor", conc, 1), newGens(sys, "aisecops", conc, steps)
	for i := range n {
		warm := min(o.warmup, sliceWarmup)
		if i == 0 {
			warm = o.warmup
		}
		f, err := takeSample(ctx, sys, floor, sys.noop, fgens, false, o.timeout, warm, slice, nil)
		if err != nil {
			return fs, rs, fmt.Errorf("floor c=%d: %w", conc, err)
		}
		r, err := takeSample(ctx, sys, real, sys.serve, rgens, true, o.timeout, warm, slice, nil)
		if err != nil {
			return fs, rs, fmt.Errorf("aisecops c=%d steps=%d: %w", conc, steps, err)
		}
		fs.add(f)
		rs.add(r)
	}
	return fs, rs, nil
}

// sliceWarmup is the unmeasured time before a row's later slices.
const sliceWarmup = 300 * time.Millisecond

// measure runs one row against target (whose process is p).
func measure(ctx context.Context, sys *system, clients []envoy_service_auth_v3.AuthorizationClient, p *proc,
	name string, conc, steps int, o benchOptions, hooks *rowHooks) (row, error) {
	gens := newGens(sys, name, conc, steps)
	dur := o.duration
	if hooks != nil && hooks.minDuration > dur {
		dur = hooks.minDuration
	}
	s, err := takeSample(ctx, sys, clients, p, gens, name != "floor", o.timeout, o.warmup, dur, hooks)
	if err != nil {
		return row{}, fmt.Errorf("%s c=%d steps=%d: %w", name, conc, steps, err)
	}
	return s.row(name, conc, steps, hooks != nil)
}

// newGens are a row's closed-loop workers' request generators (kept across
// a row's slices, so runs go on where they were).
func newGens(sys *system, name string, conc, steps int) []func() (call, error) {
	prefix := fmt.Sprintf("%s-c%d-s%d-%d", name, conc, steps, time.Now().UnixNano()%1e9)
	gens := make([]func() (call, error), conc)
	for w := range conc {
		gens[w] = newRunner(sys.mix, loadAgent, prefix+"-w"+strconv.Itoa(w), steps, w).next
	}
	return gens
}

// sample is what one slice of a row measured; a row's slices add up.
type sample struct {
	t                     tally
	elapsed               time.Duration
	cpu, mach, self       time.Duration
	withRedis             bool
	redisCPU              time.Duration
	redisReads, redisRuns int64 // reads processed, scripts run
}

func (s *sample) add(o sample) {
	s.t.merge(&o.t)
	s.elapsed += o.elapsed
	s.cpu += o.cpu
	s.mach += o.mach
	s.self += o.self
	s.withRedis = s.withRedis || o.withRedis
	s.redisCPU += o.redisCPU
	s.redisReads += o.redisReads
	s.redisRuns += o.redisRuns
}

// takeSample runs gens against one target (whose process is p) for warmup,
// then measures dur.
func takeSample(ctx context.Context, sys *system, clients []envoy_service_auth_v3.AuthorizationClient, p *proc,
	gens []func() (call, error), withRedis bool, timeout, warmup, dur time.Duration, hooks *rowHooks) (sample, error) {
	var cpu0, cpu1, mach0, mach1, self0, self1 time.Duration
	var r0, r1 redisStats
	snap := func(cpu, mach, self *time.Duration, rs *redisStats) error {
		var err error
		if withRedis {
			if *rs, err = readRedis(ctx, sys.rc); err != nil {
				return err
			}
		}
		if *cpu, err = procCPU(p.pid()); err != nil {
			return fmt.Errorf("%s CPU: %w", p.name, err)
		}
		if *mach, err = machineCPU(); err != nil {
			return err
		}
		*self = selfCPU()
		return nil
	}
	begin := func() error {
		if err := snap(&cpu0, &mach0, &self0, &r0); err != nil {
			return err
		}
		if hooks != nil {
			return hooks.begin()
		}
		return nil
	}
	end := func() error {
		err := snap(&cpu1, &mach1, &self1, &r1)
		if hooks != nil {
			err = errors.Join(err, hooks.end())
		}
		return err
	}
	t, elapsed, err := closedLoop(ctx, clients, gens, timeout, warmup, dur, begin, end)
	if err != nil {
		return sample{}, err
	}
	if err := p.alive(); err != nil {
		return sample{}, err
	}
	s := sample{t: t, elapsed: elapsed, cpu: cpu1 - cpu0, mach: mach1 - mach0, self: self1 - self0, withRedis: withRedis}
	if withRedis {
		// One read is the closing INFO itself; the server PINGs Redis once a
		// second for its health.
		s.redisCPU = r1.cpu - r0.cpu
		s.redisReads = int64(r1.reads-r0.reads) - 1 - int64(elapsed.Seconds())
		s.redisRuns = int64(r1.scripts - r0.scripts)
	}
	return s, nil
}

// row is what the samples s add up to.
func (s *sample) row(name string, conc, steps int, profiled bool) (row, error) {
	t := &s.t
	slices.Sort(t.lat)
	n := t.checks()
	if n == 0 {
		return row{}, fmt.Errorf("%s c=%d steps=%d: no Check answered in %s", name, conc, steps, s.elapsed)
	}
	elapsed := s.elapsed
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	r := row{
		Target: name, Concurrency: conc, Seconds: elapsed.Seconds(), Checks: n, RPS: float64(n) / elapsed.Seconds(),
		P50us: us(percentile(t.lat, 50)), P90us: us(percentile(t.lat, 90)), P99us: us(percentile(t.lat, 99)),
		ServerCPUus: per(s.cpu), AllowedPct: 100 * float64(t.allowed) / float64(n), TopDenials: t.topDenials(5),
		LoadCPUus: per(s.self), Profiled: profiled,
	}
	if name != "floor" {
		r.Steps = steps
	}
	for k := range numKinds {
		r.Mix = append(r.Mix, fmt.Sprintf("%s %.0f%%", kindNames[k], 100*float64(t.byKind[k])/float64(n)))
	}
	other := s.mach - s.cpu - s.self
	if s.withRedis {
		rcpu := per(s.redisCPU)
		other -= s.redisCPU
		rt := float64(s.redisReads) / float64(n)
		scripts := float64(s.redisRuns) / float64(n)
		r.RedisCPUus, r.RedisRT, r.RedisScripts = &rcpu, &rt, &scripts
	}
	r.OtherCores = max(other.Seconds(), 0) / elapsed.Seconds()
	return r, nil
}

type rowHooks struct {
	minDuration time.Duration
	begin, end  func() error
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func (r *row) ratios(floor row) {
	if floor.ServerCPUus > 0 {
		x := r.ServerCPUus / floor.ServerCPUus
		r.CPUxFloor = &x
	}
	if floor.P99us > 0 {
		x := r.P99us / floor.P99us
		r.P99xFloor = &x
	}
}

func (r row) progress() string {
	s := fmt.Sprintf("%-8s c=%-2d steps=%-3d %7.0f rps p50 %s p99 %s CPU %.0fµs/Check allowed %.1f%%",
		r.Target, r.Concurrency, r.Steps, r.RPS, ms(r.P50us), ms(r.P99us), r.ServerCPUus, r.AllowedPct)
	if r.RedisCPUus != nil {
		s += fmt.Sprintf(" Redis %.0fµs %.2f RT", *r.RedisCPUus, *r.RedisRT)
	}
	if r.CPUxFloor != nil {
		s += fmt.Sprintf(" ×floor CPU %.2f p99 %.2f", *r.CPUxFloor, *r.P99xFloor)
	}
	return s + fmt.Sprintf(" other %.2f cores", r.OtherCores)
}

func ms(v float64) string { return strconv.FormatFloat(v/1000, 'f', 2, 64) + "ms" }

// targets says, per run length, whether the c=32 rows meet the targets.
func targets(rows []row) []string {
	var out []string
	for _, r := range rows {
		if r.Target != "aisecops" || r.Concurrency != targetConc || r.CPUxFloor == nil {
			continue
		}
		met := func(ok bool) string {
			if ok {
				return "met"
			}
			return "NOT met"
		}
		out = append(out, fmt.Sprintf("c=%d, runs of %d: CPU %.2f× floor (≤ %.1f: %s); p99 %.2f× floor (≤ %.1f: %s); Redis CPU %.0f µs/Check (≤ %.0f: %s); %.2f Redis round trips/Check (%.0f: %s)",
			r.Concurrency, r.Steps, *r.CPUxFloor, targetCPURatio, met(*r.CPUxFloor <= targetCPURatio),
			*r.P99xFloor, targetP99Ratio, met(*r.P99xFloor <= targetP99Ratio),
			*r.RedisCPUus, targetRedisCPU, met(*r.RedisCPUus <= targetRedisCPU),
			*r.RedisRT, targetRT, met(*r.RedisRT <= targetRT+0.005)))
	}
	return out
}

func writeReport(rep benchReport, jsonPath string, stdout io.Writer) error {
	if jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if jsonPath == "-" { // JSON alone on stdout, for a pipe
			_, err = stdout.Write(b)
			return err
		}
		if err := os.WriteFile(jsonPath, b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprint(stdout, markdown(rep))
	return nil
}

// markdown is the report as a table for the README.
func markdown(rep benchReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s; %s; %s; %gs per row after %gs warm-up; %d gRPC connections\n\n",
		rep.Started.Format("2006-01-02 15:04 MST"), rep.Machine, rep.Redis, rep.RowSeconds, rep.WarmupSecs, rep.Connections)
	b.WriteString("| target | c | steps/run | rps | p50 ms | p90 ms | p99 ms | CPU µs/Check | ×floor CPU | ×floor p99 | Redis CPU µs/Check | Redis RT/Check | allowed | other cores |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	rows := rep.Rows
	if rep.Profile != nil {
		rows = append(rows[:len(rows):len(rows)], *rep.Profile)
	}
	for _, r := range rows {
		steps, target := "–", r.Target
		if r.Steps > 0 {
			steps = strconv.Itoa(r.Steps)
		}
		if r.Profiled {
			target += " (profiled)"
		}
		opt := func(p *float64, format string) string {
			if p == nil {
				return "–"
			}
			return fmt.Sprintf(format, *p)
		}
		allowed := fmt.Sprintf("%.1f%%", r.AllowedPct)
		if r.AllowedPct < 99.95 && r.AllowedPct >= 99.5 {
			allowed = fmt.Sprintf("%.2f%%", r.AllowedPct)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %.2f | %.2f | %.2f | %.0f | %s | %s | %s | %s | %s | %.2f |\n",
			target, r.Concurrency, steps, r.RPS, r.P50us/1000, r.P90us/1000, r.P99us/1000, r.ServerCPUus,
			opt(r.CPUxFloor, "%.2f"), opt(r.P99xFloor, "%.2f"), opt(r.RedisCPUus, "%.0f"), opt(r.RedisRT, "%.2f"), allowed, r.OtherCores)
	}
	if len(rep.Rows) > 0 {
		fmt.Fprintf(&b, "\nMix of the real server's rows: %s.\n", strings.Join(rep.Rows[len(rep.Rows)-1].Mix, ", "))
	}
	var denied []string
	for _, r := range rows {
		if len(r.TopDenials) > 0 {
			denied = append(denied, fmt.Sprintf("- %s c=%d steps=%d: %s", r.Target, r.Concurrency, r.Steps, strings.Join(r.TopDenials, ", ")))
		}
	}
	if len(denied) > 0 {
		b.WriteString("\nDenied or failed Checks (every Check of the load should be allowed; these measure something else):\n" + strings.Join(denied, "\n") + "\n")
	}
	if len(rep.Targets) > 0 {
		b.WriteString("\nTargets (issue, at c=32):\n")
		for _, t := range rep.Targets {
			b.WriteString("- " + t + "\n")
		}
	}
	return b.String()
}

// machine describes where the numbers come from.
func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimLeft(v, " \t:"))
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average " + strings.Join(strings.Fields(string(b))[:3], " ") + " at start"
	}
	return fmt.Sprintf("%d CPUs %s%s", runtime.NumCPU(), model, load)
}
