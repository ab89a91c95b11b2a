package egress

import (
	"reflect"
	"sync"
	"testing"
)

// TestScansShareNothing: scans are reused (newScan), so one inspection must
// leave nothing to the next. Each request is inspected alone, then among the
// others in both orders and concurrently, and must answer the same: a secret
// found in one request is not found in the next, an allowed recipient of one
// is not allowed in the next, a redaction does not stick to a clean string.
func TestScansShareNothing(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	type call struct {
		req *Request
		pol *Policy
	}
	json := func(s string, args string) *Request {
		return &Request{Method: "POST", Path: "/send", ContentType: "application/json", Body: []byte(s), ToolClass: "external_send",
			RouteHost: "mail.example.com", Arguments: []byte(args)}
	}
	calls := []call{
		{json(`{"text":"key `+awsKey+` here"}`, `{"to":"bob@partner.example"}`), &Policy{DestinationArgs: []string{"to"}, Destinations: []string{"partner.example"}}},
		{json(`{"text":"write to bob@partner.example"}`, `{"to":"eve@evil.example"}`), &Policy{DestinationArgs: []string{"to"}, Destinations: []string{"partner.example"}}},
		{json(`{"text":"token `+ghToken+`"}`, `{}`), nil},
		{json(`{"text":"nothing to see"}`, `{"to":"bob@partner.example"}`), &Policy{DestinationArgs: []string{"to"}}},
		{&Request{Method: "GET", Path: "/x?q=" + awsKey, ToolClass: "read", RouteHost: "api.example.com"}, nil},
	}
	strs := []string{"run-42", "key " + awsKey, "bob@partner.example", "plain", ghToken}
	alone := make([]Result, len(calls))
	aloneErr := make([]error, len(calls))
	for i, c := range calls {
		alone[i], aloneErr[i] = newTestInspector(t, Limits{}).Inspect(c.req, c.pol)
	}
	redacted := make([]string, len(strs))
	for i, v := range strs {
		redacted[i] = newTestInspector(t, Limits{}).Redact(v)
	}
	check := func(i int) {
		got, err := in.Inspect(calls[i].req, calls[i].pol)
		if !reflect.DeepEqual(got, alone[i]) || (err == nil) != (aloneErr[i] == nil) {
			t.Errorf("request %d after others: %+v %v, alone %+v %v", i, got, err, alone[i], aloneErr[i])
		}
		for j, v := range strs {
			if r := in.Redact(v); r != redacted[j] {
				t.Errorf("Redact(%q) after request %d = %q, alone %q", v, i, r, redacted[j])
			}
		}
	}
	for i := range calls {
		check(i)
	}
	for i := len(calls) - 1; i >= 0; i-- {
		check(i)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range calls {
				check(i)
			}
		})
	}
	wg.Wait()
}
