package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// TestVolatileRedisRefused: the service refuses a Redis without the
// append-only file (spent budgets would come back after its restart) unless
// started with --allow-volatile-redis, which /readyz then repeats.
func TestVolatileRedisRefused(t *testing.T) {
	bin := buildBinary(t)
	srv := redistest.StartServer(t) // --appendonly no
	home := t.TempDir()
	a := freeAddrs(t, 2)
	env := append(os.Environ(), "AISECOPS_HOME="+home, "AISECOPS_AUTHZ_ADDR="+a[0], "AISECOPS_HTTP_ADDR="+a[1],
		"AISECOPS_REDIS_URL=redis://"+srv.Addr())
	cmd := exec.Command(bin, "serve")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "appendonly") {
		t.Fatalf("serve on a volatile Redis: %v\n%s", err, out)
	}
	p := startProc(t, bin, env, "serve", "--allow-volatile-redis")
	waitReady(t, "http://"+a[1]+"/readyz")
	if body := get(t, "http://"+a[1]+"/readyz", ""); !strings.Contains(body, "does not persist writes") {
		t.Errorf("/readyz does not repeat the volatile Redis: %s", body)
	}
	if !strings.Contains(p.logs.String(), "does not persist writes") {
		t.Error("the log does not say the Redis is volatile")
	}
	p.stop(t)
}
