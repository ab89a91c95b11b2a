package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

const profileSeconds = 10

// profileRow runs one more c=32 row on the real server (runs of 20 steps, or
// the first --steps) while taking a 10 s CPU profile, and the allocations
// profile before and after it, into o.profile. It is a row of its own so
// that the profiler's overhead stays out of the table's rows.
func profileRow(ctx context.Context, sys *system, clients []envoy_service_auth_v3.AuthorizationClient, o benchOptions, stderr io.Writer) (row, error) {
	if err := os.MkdirAll(o.profile, 0o755); err != nil {
		return row{}, err
	}
	base := "http://" + sys.serve.addr("pprof") + "/debug/pprof/"
	steps := o.steps[0]
	if slices.Contains(o.steps, 20) {
		steps = 20
	}
	cpuPath := filepath.Join(o.profile, "cpu.pb.gz")
	allocsBefore := filepath.Join(o.profile, "allocs-before.pb.gz")
	allocsPath := filepath.Join(o.profile, "allocs.pb.gz")
	cpuDone := make(chan error, 1)
	hooks := &rowHooks{
		minDuration: profileSeconds*time.Second + 2*time.Second,
		begin: func() error {
			if err := fetch(ctx, base+"allocs", allocsBefore); err != nil {
				return err
			}
			go func() { cpuDone <- fetch(ctx, fmt.Sprintf("%sprofile?seconds=%d", base, profileSeconds), cpuPath) }()
			return nil
		},
		end: func() error {
			if err := <-cpuDone; err != nil {
				return err
			}
			return fetch(ctx, base+"allocs", allocsPath)
		},
	}
	r, err := measure(ctx, sys, clients, sys.serve, "aisecops", targetConc, steps, o, hooks)
	if err != nil {
		return row{}, err
	}
	fmt.Fprintln(stderr, r.progress(), "(profiled)")
	fmt.Fprintf(stderr, "profiles in %s: go tool pprof -top %s; go tool pprof -sample_index=alloc_space -top -base %s %s\n",
		o.profile, cpuPath, allocsBefore, allocsPath)
	summarize(o.profile, cpuPath, allocsBefore, allocsPath, stderr)
	return r, nil
}

// fetch GETs url into path.
func fetch(ctx context.Context, url, path string) error {
	ctx, cancel := context.WithTimeout(ctx, (profileSeconds+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("pprof: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("pprof %s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// summarize writes the top functions of the profiles next to them (and to
// w), with `go tool pprof` when a Go toolchain is at hand.
func summarize(dir, cpu, allocsBefore, allocs string, w io.Writer) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(w, "no go toolchain on PATH: read the profiles with go tool pprof")
		return
	}
	views := []struct {
		file string
		args []string
	}{
		{"cpu-top-flat.txt", []string{"tool", "pprof", "-top", "-nodecount=25", cpu}},
		{"cpu-top-cum.txt", []string{"tool", "pprof", "-top", "-cum", "-nodecount=25", cpu}},
		{"allocs-top.txt", []string{"tool", "pprof", "-sample_index=alloc_space", "-top", "-nodecount=25", "-base", allocsBefore, allocs}},
		{"allocs-top-objects.txt", []string{"tool", "pprof", "-sample_index=alloc_objects", "-top", "-nodecount=25", "-base", allocsBefore, allocs}},
	}
	for _, v := range views {
		out, err := exec.Command(goBin, v.args...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(w, "go %s: %v\n%s", strings.Join(v.args, " "), err, out)
			continue
		}
		_ = os.WriteFile(filepath.Join(dir, v.file), out, 0o644)
		fmt.Fprintf(w, "== %s\n%s", v.file, out)
	}
}
