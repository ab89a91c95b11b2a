package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
)

func TestPprofLoopbackOnly(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	for _, addr := range []string{":6060", "0.0.0.0:6060", "192.0.2.1:6060", "example.com:6060", "nonsense"} {
		if err := servePprof(context.Background(), addr, log, func(string, func() error) {}); err == nil {
			t.Errorf("--pprof-addr %s accepted", addr)
		}
	}
	if err := servePprof(context.Background(), "", log, func(string, func() error) { t.Error("started with no address") }); err != nil {
		t.Fatal(err)
	}
}

func TestPprofServes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	err := servePprof(ctx, "127.0.0.1:0", log, func(_ string, f func() error) { wg.Go(func() { _ = f() }) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); wg.Wait() }()
	_, addr, _ := strings.Cut(logged.String(), "addr=")
	resp, err := http.Get("http://" + strings.TrimSpace(addr) + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pprof: %d %v", resp.StatusCode, err)
	}
}
