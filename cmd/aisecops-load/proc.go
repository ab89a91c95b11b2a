package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// proc is a child process of the load: the floor or `aisecops serve`.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // of Wait, once done is closed

	mu    sync.Mutex
	addrs map[string]string // what it said it listens on, by log message
	ready chan struct{}     // closed once every wanted address is known
	want  []string
}

// startProc starts bin with args. Its stdout and stderr go to log; each line
// is also offered to parse, which returns a (name, address) it announces.
func startProc(name, bin string, args []string, log io.Writer, want []string, parse func(line string) (string, string, bool)) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{}), addrs: map[string]string{}, ready: make(chan struct{}), want: want}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = sysProcAttr()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(log, line)
			if k, v, ok := parse(line); ok {
				p.announce(k, v)
			}
		}
		_, _ = io.Copy(log, pr)
	}()
	go func() {
		p.err = cmd.Wait()
		_ = pw.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) announce(k, v string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.addrs[k] = v
	for _, w := range p.want {
		if p.addrs[w] == "" {
			return
		}
	}
	select {
	case <-p.ready:
	default:
		close(p.ready)
	}
}

// addr is the address the process announced under k.
func (p *proc) addr(k string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[k]
}

// waitReady waits until the process has announced its addresses.
func (p *proc) waitReady(ctx context.Context, timeout time.Duration, logPath string) error {
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("%s exited before it was ready (%v); its log %s ends:\n%s", p.name, p.err, logPath, tailFile(logPath, 3000))
	case <-time.After(timeout):
		return fmt.Errorf("%s not ready after %s; its log %s ends:\n%s", p.name, timeout, logPath, tailFile(logPath, 3000))
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop asks the process to end (SIGTERM), then kills it after grace.
func (p *proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, grace)
	}
}

// alive reports an error if the process has exited.
func (p *proc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v", p.name, p.err)
	default:
		return nil
	}
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// serveAnnouncement finds the listening addresses in `aisecops serve`'s JSON
// log lines ("ext_authz gRPC listening", "HTTP API listening", "pprof
// listening: …").
func serveAnnouncement(line string) (string, string, bool) {
	var l struct {
		Msg  string `json:"msg"`
		Addr string `json:"addr"`
	}
	if json.Unmarshal([]byte(line), &l) != nil || l.Addr == "" {
		return "", "", false
	}
	switch {
	case l.Msg == "ext_authz gRPC listening":
		return "grpc", l.Addr, true
	case l.Msg == "HTTP API listening":
		return "http", l.Addr, true
	case strings.HasPrefix(l.Msg, "pprof listening"):
		return "pprof", l.Addr, true
	}
	return "", "", false
}

// noopAnnouncement finds the floor's "listening ADDR" line.
func noopAnnouncement(line string) (string, string, bool) {
	a, ok := strings.CutPrefix(line, "listening ")
	return "grpc", a, ok
}

// startServe starts `aisecops serve` on loopback ports of its choosing, with
// run state in Redis at redisURL and the load's routes file.
// volatile: Redis runs without persistence (bench --redis-aof=false), which
// serve refuses unless told.
func startServe(ctx context.Context, bin, home, routes, redisURL string, pprof, volatile bool) (*proc, error) {
	args := []string{"serve", "--home", home, "--config", routes, "--redis-url", redisURL,
		"--authz-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "info"}
	if volatile {
		args = append(args, "--allow-volatile-redis")
	}
	want := []string{"grpc", "http"}
	if pprof {
		args = append(args, "--pprof-addr", "127.0.0.1:0")
		want = append(want, "pprof")
	}
	logPath := filepath.Join(home, "serve.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	p, err := startProc("aisecops serve", bin, args, log, want, serveAnnouncement)
	if err != nil {
		log.Close()
		return nil, err
	}
	go func() { <-p.done; log.Close() }()
	if err := p.waitReady(ctx, 60*time.Second, logPath); err != nil {
		_ = p.stop(time.Second)
		return nil, err
	}
	return p, nil
}

// startNoop starts the floor: this very binary's noop command.
func startNoop(ctx context.Context, dir string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "noop.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	p, err := startProc("no-op floor", self, []string{"noop", "--addr", "127.0.0.1:0"}, log, []string{"grpc"}, noopAnnouncement)
	if err != nil {
		log.Close()
		return nil, err
	}
	go func() { <-p.done; log.Close() }()
	if err := p.waitReady(ctx, 20*time.Second, logPath); err != nil {
		_ = p.stop(time.Second)
		return nil, err
	}
	return p, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// configuration in use, asked of getconf when it is there.
var clockTicks = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
			return float64(v)
		}
	}
	return 100
}()

// procCPU is a process's user+system CPU time so far, from /proc/<pid>/stat
// (utime and stime, fields 14 and 15, in clock ticks: 10 ms resolution).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

func parseProcStat(s string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("/proc stat: too few fields")
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat: %w", err)
	}
	return ticks(float64(ut + st)), nil
}

func ticks(n float64) time.Duration { return time.Duration(n / clockTicks * float64(time.Second)) }

// machineCPU is the CPU time all processors spent busy (everything but idle
// and iowait) since boot, from /proc/stat: what the machine did, so that the
// CPU of processes other than ours during a row can be reported as noise.
func machineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineStat(string(b))
}

func parseMachineStat(s string) (time.Duration, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy float64
	for i, v := range f[1:] {
		// Not busy here: idle, iowait, steal (the hypervisor ran someone
		// else); guest times are already counted in user.
		if i == 3 || i == 4 || i >= 7 {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	return ticks(busy), nil
}

// selfCPU is the load tool's own CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisStats is what a row reads of Redis before and after.
type redisStats struct {
	cpu      time.Duration // used_cpu_sys + used_cpu_user of the server process
	reads    int64         // total_reads_processed: read events on client sockets
	scripts  int64         // calls of EVALSHA and EVAL
	commands int64         // total_commands_processed (includes commands run by scripts)
	memory   int64         // used_memory
	keys     int64
}

// readRedis reads the INFO sections a row needs, in one command (so one read
// of its own in total_reads_processed).
func readRedis(ctx context.Context, c *redis.Client) (redisStats, error) {
	info, err := c.Info(ctx, "cpu", "stats", "commandstats", "memory", "keyspace").Result()
	if err != nil {
		return redisStats{}, fmt.Errorf("redis INFO: %w", err)
	}
	return parseRedisInfo(info)
}

func parseRedisInfo(info string) (redisStats, error) {
	var s redisStats
	var cpuSys, cpuUser float64
	seen := 0
	for line := range strings.SplitSeq(info, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "used_cpu_sys":
			cpuSys, _ = strconv.ParseFloat(v, 64)
			seen++
		case "used_cpu_user":
			cpuUser, _ = strconv.ParseFloat(v, 64)
			seen++
		case "total_reads_processed":
			s.reads, _ = strconv.ParseInt(v, 10, 64)
			seen++
		case "total_commands_processed":
			s.commands, _ = strconv.ParseInt(v, 10, 64)
		case "used_memory":
			s.memory, _ = strconv.ParseInt(v, 10, 64)
		case "cmdstat_evalsha", "cmdstat_eval":
			calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
			n, _ := strconv.ParseInt(calls, 10, 64)
			s.scripts += n
		default:
			if strings.HasPrefix(k, "db") {
				keys, _, _ := strings.Cut(strings.TrimPrefix(v, "keys="), ",")
				n, _ := strconv.ParseInt(keys, 10, 64)
				s.keys += n
			}
		}
	}
	if seen < 3 {
		return s, errors.New("redis INFO lacks used_cpu_sys, used_cpu_user or total_reads_processed (Redis 6.0 or later is needed)")
	}
	s.cpu = time.Duration((cpuSys + cpuUser) * float64(time.Second))
	return s, nil
}
