// Package redistest starts real redis-server processes for tests: a single node
// on a free loopback port, or a Redis Cluster formed with redis-cli. Servers
// keep nothing on disk, die with the test binary (Pdeathsig on Linux) and are
// killed in t.Cleanup.
//
// It is a test instrument only: production code must not import it. When
// redis-server is missing, tests are skipped with a clear message — except
// under CI=true, where they fail, so CI cannot silently skip them.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Require returns the path of redis-server, or skips (fails under CI=true) the test.
func Require(t testing.TB) string {
	t.Helper()
	path, err := lookPath()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redistest: %v (CI=true: install redis-server, e.g. apt-get install -y redis-server)", err)
		}
		t.Skipf("redistest: %v; skipping Redis test (install redis-server to run it)", err)
	}
	return path
}

func lookPath() (string, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New("redis-server not found on PATH")
	}
	return path, nil
}

// Server is one redis-server process.
type Server struct {
	bin  string
	dir  string
	port int
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartServer starts a redis-server on a free loopback port below 32768 and
// kills it when the test ends. extraArgs are passed on the command line, e.g.
// "--enable-debug-command", "local".
func StartServer(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	bin := Require(t)
	s, err := NewServer(bin, t.TempDir(), extraArgs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

// NewServer starts a server without a testing.TB (e.g. from TestMain); the
// caller must Kill it.
func NewServer(bin, dir string, extraArgs ...string) (*Server, error) {
	var lastErr error
	for range 8 { // another process may take the port between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{bin: bin, dir: dir, port: port, args: extraArgs}
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("redistest: start redis-server: %w", lastErr)
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Kill stops the server with SIGKILL and waits for it; it is idempotent.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the server again on the same port (after Kill). Data is gone:
// the server keeps nothing on disk.
func (s *Server) Restart() error {
	s.Kill()
	var err error
	for range 50 { // the port can linger briefly after a kill
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// Client returns a go-redis client for the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Server) start() error {
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--daemonize", "no",
	}
	args = append(args, s.args...)
	logPath := filepath.Join(s.dir, "redis-"+strconv.Itoa(s.port)+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
wait:
	for {
		err := ping(s.Addr(), cmd.Process.Pid)
		switch {
		case err == nil:
			break wait
		case errors.Is(err, errAuthRequired):
			// A server started with ACLs will not tell a stranger its pid. One
			// that lost the race for the port exits at once, so a server still
			// running a moment later is ours.
			select {
			case <-done:
			case <-time.After(50 * time.Millisecond):
				break wait
			}
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited: %s", s.port, tail(logPath))
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server on port %d not ready after 5s: %s", s.port, tail(logPath))
		}
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

// ping speaks raw RESP so readiness does not depend on the client under test.
// It also checks that the server answering is ours (process_id), not another
// test's server that won the race for the port.
func ping(addr string, pid int) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("INFO server\r\n")); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	head, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.HasPrefix(head, "-NOAUTH") || strings.HasPrefix(head, "-NOPERM") {
		return errAuthRequired
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if !strings.HasPrefix(head, "$") || err != nil || n < 0 || n > 1<<20 {
		return fmt.Errorf("INFO answered %q", strings.TrimSpace(head))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	if !strings.Contains(string(body), "process_id:"+strconv.Itoa(pid)+"\r\n") {
		return errors.New("another server answers on this port")
	}
	return nil
}

var errAuthRequired = errors.New("server requires authentication")

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// freePort picks a random port in [20000, 32768) that is free now. Ports below
// 32768 are outside Linux's ephemeral range, so outgoing connections do not
// take them between the probe and the server's bind.
func freePort() (int, error) {
	for range 100 {
		p := 20000 + rand.IntN(12768)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, errors.New("redistest: no free port found")
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts a cluster of masters (1, or 3 and more) and kills it
// when the test ends. Forming takes about a second: share one per test package.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	bin := Require(t)
	c, err := NewCluster(bin, t.TempDir(), masters)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	return c
}

// NewCluster starts a cluster without a testing.TB (e.g. from TestMain); the
// caller must Kill it.
func NewCluster(bin, dir string, masters int) (*Cluster, error) {
	if masters != 1 && masters < 3 {
		return nil, fmt.Errorf("redistest: a cluster needs 1 or at least 3 masters, not %d", masters)
	}
	c := &Cluster{}
	for i := range masters {
		nodeDir := filepath.Join(dir, "node"+strconv.Itoa(i))
		if err := os.MkdirAll(nodeDir, 0o700); err != nil {
			c.Kill()
			return nil, err
		}
		bus, err := freePort()
		if err != nil {
			c.Kill()
			return nil, err
		}
		s, err := NewServer(bin, nodeDir,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(nodeDir, "nodes.conf"),
			"--cluster-node-timeout", "500",
			"--cluster-port", strconv.Itoa(bus))
		if err != nil {
			c.Kill()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
	}
	if err := c.form(bin); err != nil {
		c.Kill()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) form(bin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if len(c.Nodes) == 1 {
		rc := redis.NewClient(&redis.Options{Addr: c.Nodes[0].Addr()})
		defer rc.Close()
		if err := rc.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
			return fmt.Errorf("redistest: cluster addslotsrange: %w", err)
		}
	} else {
		cli := filepath.Join(filepath.Dir(bin), "redis-cli")
		if _, err := os.Stat(cli); err != nil {
			if cli, err = exec.LookPath("redis-cli"); err != nil {
				return errors.New("redistest: redis-cli not found")
			}
		}
		args := []string{"--cluster", "create"}
		args = append(args, c.Addrs()...)
		args = append(args, "--cluster-replicas", "0", "--cluster-yes")
		out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("redistest: redis-cli --cluster create: %w: %s", err, out)
		}
	}
	// Wait until every node sees every slot served.
	for _, n := range c.Nodes {
		rc := redis.NewClient(&redis.Options{Addr: n.Addr()})
		for {
			info, err := rc.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_slots_ok:16384") {
				break
			}
			select {
			case <-ctx.Done():
				_ = rc.Close()
				return fmt.Errorf("redistest: cluster not ok: %v %s", err, info)
			case <-time.After(20 * time.Millisecond):
			}
		}
		_ = rc.Close()
	}
	return nil
}

// Addrs are the nodes' host:port.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr()
	}
	return out
}

// Kill stops every node.
func (c *Cluster) Kill() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Client returns a go-redis cluster client, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}
