package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// answer is what one Check came back with.
type answer struct {
	allowed    bool
	decisionID string
	// code is why it was not allowed: the first reason's code of a denial
	// ("require_approval:" before it when a human is asked), or
	// "grpc:<code>" when the Check failed as an RPC.
	code string
}

const headerDecisionID = "x-aisecops-decision-id"

// check sends one Check and decodes the answer.
func check(ctx context.Context, client envoy_service_auth_v3.AuthorizationClient, req *envoy_service_auth_v3.CheckRequest, timeout time.Duration) answer {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := client.Check(ctx, req)
	if err != nil {
		return answer{code: "grpc:" + status.Code(err).String()}
	}
	if ok := resp.GetOkResponse(); ok != nil {
		a := answer{allowed: true}
		for _, h := range ok.GetHeaders() {
			if h.GetHeader().GetKey() == headerDecisionID {
				a.decisionID = h.GetHeader().GetValue()
			}
		}
		return a
	}
	d := resp.GetDeniedResponse()
	type decision struct {
		Decision   string `json:"decision"`
		DecisionID string `json:"decision_id"`
		Reasons    []struct {
			Code string `json:"code"`
		} `json:"reasons"`
	}
	// An MCP call is refused with a JSON-RPC error whose data is the same
	// decision body; anything else carries the body as is.
	var rpc struct {
		Error struct {
			Data decision `json:"data"`
		} `json:"error"`
	}
	var body decision
	if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil || len(body.Reasons) == 0 {
		if json.Unmarshal([]byte(d.GetBody()), &rpc) != nil || len(rpc.Error.Data.Reasons) == 0 {
			return answer{code: fmt.Sprintf("denied:%d", d.GetStatus().GetCode())}
		}
		body = rpc.Error.Data
	}
	code := body.Reasons[0].Code
	if body.Decision == "require_approval" {
		code = "require_approval:" + code
	}
	return answer{code: code, decisionID: body.DecisionID}
}

// tally is what a row's Checks came back with.
type tally struct {
	lat     []time.Duration
	allowed int64
	denied  map[string]int64 // by answer.code
	byKind  [numKinds]int64
}

func (t *tally) add(a answer, k kind, d time.Duration) {
	t.lat = append(t.lat, d)
	t.byKind[k]++
	if a.allowed {
		t.allowed++
		return
	}
	if t.denied == nil {
		t.denied = map[string]int64{}
	}
	t.denied[a.code]++
}

func (t *tally) merge(o *tally) {
	t.lat = append(t.lat, o.lat...)
	t.allowed += o.allowed
	for k, v := range o.denied {
		if t.denied == nil {
			t.denied = map[string]int64{}
		}
		t.denied[k] += v
	}
	for k := range t.byKind {
		t.byKind[k] += o.byKind[k]
	}
}

func (t *tally) checks() int64 { return int64(len(t.lat)) }

// topDenials are the most frequent denial codes, most frequent first.
func (t *tally) topDenials(n int) []string {
	codes := slices.Collect(maps.Keys(t.denied))
	slices.SortFunc(codes, func(a, b string) int {
		if c := t.denied[b] - t.denied[a]; c != 0 {
			if c > 0 {
				return 1
			}
			return -1
		}
		return compareStrings(a, b)
	})
	out := []string{}
	for _, c := range codes[:min(n, len(codes))] {
		out = append(out, fmt.Sprintf("%s×%d", c, t.denied[c]))
	}
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// percentile of sorted latencies (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// dial opens n gRPC connections to a loopback addr: Envoy keeps a few
// connections to its ext_authz cluster (one per worker thread), not one per
// request.
func dial(addr string, n int) ([]envoy_service_auth_v3.AuthorizationClient, func(), error) {
	if err := loopback(addr); err != nil {
		return nil, nil, err
	}
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	var clients []envoy_service_auth_v3.AuthorizationClient
	for range max(n, 1) {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		c.Connect()
		conns = append(conns, c)
		clients = append(clients, envoy_service_auth_v3.NewAuthorizationClient(c))
	}
	return clients, closeAll, nil
}

// dialHealth is a gRPC health client of a loopback addr.
func dialHealth(addr string) (healthpb.HealthClient, func(), error) {
	if err := loopback(addr); err != nil {
		return nil, nil, err
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return healthpb.NewHealthClient(c), func() { _ = c.Close() }, nil
}

// Phases of a closed-loop row.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// closedLoop runs one worker per generator, each sending its next Check as
// soon as the last one is answered, for warmup and then dur. begin runs when
// measuring starts and end when it stops; only Checks answered in between are
// tallied. It returns the tally and the measured wall time.
func closedLoop(ctx context.Context, clients []envoy_service_auth_v3.AuthorizationClient, gens []func() (call, error),
	timeout, warmup, dur time.Duration, begin, end func() error) (tally, time.Duration, error) {
	var phase atomic.Int32
	var wg sync.WaitGroup
	tallies := make([]tally, len(gens))
	errs := make([]error, len(gens))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, next := range gens {
		client := clients[i%len(clients)]
		wg.Go(func() {
			t := &tallies[i]
			t.lat = make([]time.Duration, 0, 4096)
			for phase.Load() != phaseStop && ctx.Err() == nil {
				c, err := next()
				if err != nil {
					errs[i] = err
					cancel()
					return
				}
				start := time.Now()
				a := check(ctx, client, c.req, timeout)
				d := time.Since(start)
				if phase.Load() == phaseMeasure {
					t.add(a, c.kind, d)
				}
			}
		})
	}
	var total tally
	stopWorkers := func() { phase.Store(phaseStop); wg.Wait() }
	if !sleepCtx(ctx, warmup) {
		stopWorkers()
		return total, 0, errors.Join(ctx.Err(), errors.Join(errs...))
	}
	if err := begin(); err != nil {
		stopWorkers()
		return total, 0, err
	}
	t0 := time.Now()
	phase.Store(phaseMeasure)
	sleepCtx(ctx, dur)
	phase.Store(phaseStop)
	elapsed := time.Since(t0)
	endErr := end()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return total, 0, err
	}
	if endErr != nil {
		return total, 0, endErr
	}
	if err := ctx.Err(); err != nil {
		return total, 0, err
	}
	for i := range tallies {
		total.merge(&tallies[i])
	}
	slices.Sort(total.lat)
	return total, elapsed, nil
}

// sleepCtx sleeps d or until ctx ends; it reports whether it slept in full.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
