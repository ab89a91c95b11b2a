// Package envoyharness is a test instrument, not a data plane: a small HTTP
// front that does what Envoy's ext_authz HTTP filter is documented to do, and
// nothing more, so end-to-end scenarios can run on machines with no Envoy
// binary. It takes its routes and filter settings from
// Envoy's own protos — the resources the control plane pushes — and:
//
//   - matches the virtual host by Host/:authority and the route by path prefix
//     or exact path, in order, as the route configuration lists them;
//   - buffers the body up to with_request_body.max_request_bytes; a larger body is
//     answered 413 locally when allow_partial_message is false, or cut and marked
//     with x-envoy-auth-partial-body: true when it is true;
//   - builds the CheckRequest as Envoy does: lowercase headers including the
//     pseudo-headers, repeated headers joined with ",", x-request-id as the
//     request id (generated when absent), raw_body when pack_as_bytes, and the
//     route's per-filter context_extensions;
//   - calls the authz service with the grpc_service timeout; an error or timeout
//     is answered with status_on_error unless failure_mode_allow;
//   - on OK applies the header mutations and removals and proxies to the route's
//     cluster, streaming the response as it arrives, within the route's
//     timeout (15 s unless the route sets one; 0 is none); on a denial returns
//     its status, headers and body.
//
// TLS origination, retries, load balancing and everything else Envoy does are
// out of scope: clusters map to plain-HTTP test upstreams.
package envoyharness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_http_ext_authz_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ExtAuthzFilterName is the HTTP filter name whose per-route config is read.
const ExtAuthzFilterName = "envoy.filters.http.ext_authz"

// Config is what the harness runs from.
type Config struct {
	Routes    *envoy_config_route_v3.RouteConfiguration
	ExtAuthz  *envoy_extensions_filters_http_ext_authz_v3.ExtAuthz
	Authz     envoy_service_auth_v3.AuthorizationClient
	Upstreams map[string]string // cluster name → base URL of a plain-HTTP test upstream
}

// Harness is an http.Handler playing Envoy's egress listener.
type Harness struct {
	cfg     Config
	timeout time.Duration
	client  *http.Client
}

// New checks cfg and returns a Harness.
func New(cfg Config) (*Harness, error) {
	if cfg.Routes == nil || cfg.ExtAuthz == nil || cfg.Authz == nil {
		return nil, fmt.Errorf("envoyharness: Routes, ExtAuthz and Authz are required")
	}
	timeout := 200 * time.Millisecond // Envoy's default grpc_service timeout
	if t := cfg.ExtAuthz.GetGrpcService().GetTimeout(); t != nil {
		timeout = t.AsDuration()
	}
	return &Harness{cfg: cfg, timeout: timeout, client: &http.Client{}}, nil
}

func (h *Harness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, ext, ok := h.match(r.Host, r.URL.RequestURI())
	if !ok {
		http.Error(w, "no route", http.StatusNotFound) // Envoy: 404 NR
		return
	}
	cluster := route.GetRoute().GetCluster()
	upstreamTimeout := routeTimeout(route)

	body, partial, tooBig := h.buffer(r)
	if tooBig {
		http.Error(w, "Payload Too Large", http.StatusRequestEntityTooLarge)
		return
	}
	if r.Header.Get("x-request-id") == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		r.Header.Set("x-request-id", hex.EncodeToString(b[:]))
	}
	if partial {
		r.Header.Set("x-envoy-auth-partial-body", "true")
	}
	if ext != nil && ext.GetDisabled() {
		h.forward(w, r, cluster, upstreamTimeout, body)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	resp, err := h.cfg.Authz.Check(ctx, h.checkRequest(r, body, ext))
	if err != nil {
		if h.cfg.ExtAuthz.GetFailureModeAllow() {
			h.forward(w, r, cluster, upstreamTimeout, body)
			return
		}
		status := http.StatusForbidden
		if s := h.cfg.ExtAuthz.GetStatusOnError(); s != nil && s.GetCode() != 0 {
			status = int(s.GetCode())
		}
		w.WriteHeader(status)
		return
	}
	if resp.GetStatus().GetCode() != 0 {
		d := resp.GetDeniedResponse()
		for _, hv := range d.GetHeaders() {
			w.Header().Set(hv.GetHeader().GetKey(), hv.GetHeader().GetValue())
		}
		status := http.StatusForbidden
		if c := d.GetStatus().GetCode(); c != 0 {
			status = int(c)
		}
		w.WriteHeader(status)
		io.WriteString(w, d.GetBody())
		return
	}
	ok200 := resp.GetOkResponse()
	for _, hv := range ok200.GetHeaders() {
		k, v := hv.GetHeader().GetKey(), hv.GetHeader().GetValue()
		switch hv.GetAppendAction() {
		case envoy_config_core_v3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			r.Header.Add(k, v)
		case envoy_config_core_v3.HeaderValueOption_ADD_IF_ABSENT:
			if r.Header.Get(k) == "" {
				r.Header.Set(k, v)
			}
		case envoy_config_core_v3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			if r.Header.Get(k) != "" {
				r.Header.Set(k, v)
			}
		default: // OVERWRITE_IF_EXISTS_OR_ADD
			r.Header.Set(k, v)
		}
	}
	for _, k := range ok200.GetHeadersToRemove() {
		if strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
			continue // Envoy refuses to remove pseudo-headers and Host
		}
		r.Header.Del(k)
	}
	h.forward(w, r, cluster, upstreamTimeout, body)
}

// match finds the route, and its ext_authz per-route settings, for host and path.
func (h *Harness) match(host, path string) (*envoy_config_route_v3.Route, *envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute, bool) {
	host = strings.ToLower(host)
	if hp, _, err := net.SplitHostPort(host); err == nil {
		host = hp
	}
	p := path
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	vh := h.vhost(host)
	if vh == nil {
		return nil, nil, false
	}
	for _, rt := range vh.GetRoutes() {
		m := rt.GetMatch()
		matched := false
		switch {
		case m.GetPath() != "":
			matched = p == m.GetPath()
		case m.GetPrefix() != "" || m.GetPathSpecifier() != nil:
			matched = strings.HasPrefix(p, m.GetPrefix())
		}
		if !matched {
			continue
		}
		var per *envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute
		cfg := rt.GetTypedPerFilterConfig()[ExtAuthzFilterName]
		if cfg == nil {
			cfg = vh.GetTypedPerFilterConfig()[ExtAuthzFilterName]
		}
		if cfg != nil {
			per = &envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute{}
			if err := cfg.UnmarshalTo(per); err != nil {
				return nil, nil, false
			}
		}
		return rt, per, true
	}
	return nil, nil, false
}

func (h *Harness) vhost(host string) *envoy_config_route_v3.VirtualHost {
	var wildcard *envoy_config_route_v3.VirtualHost
	for _, vh := range h.cfg.Routes.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			switch {
			case d == "*":
				wildcard = vh
			case strings.EqualFold(d, host):
				return vh
			case strings.HasPrefix(d, "*") && strings.HasSuffix(host, strings.ToLower(d[1:])):
				return vh
			}
		}
	}
	return wildcard
}

// buffer reads the body as Envoy's with_request_body does.
func (h *Harness) buffer(r *http.Request) (body []byte, partial, tooBig bool) {
	bs := h.cfg.ExtAuthz.GetWithRequestBody()
	if bs == nil {
		b, _ := io.ReadAll(r.Body)
		return b, false, false
	}
	max := int64(bs.GetMaxRequestBytes())
	b, _ := io.ReadAll(io.LimitReader(r.Body, max+1))
	if int64(len(b)) <= max {
		return b, false, false
	}
	if !bs.GetAllowPartialMessage() {
		return nil, false, true
	}
	rest, _ := io.ReadAll(r.Body) // the upstream still gets the whole body
	return append(b[:max:max], append(b[max:], rest...)...), true, false
}

func (h *Harness) checkRequest(r *http.Request, body []byte, per *envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute) *envoy_service_auth_v3.CheckRequest {
	headers := map[string]string{
		":authority": r.Host,
		":method":    r.Method,
		":path":      r.URL.RequestURI(),
		":scheme":    "http",
	}
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		headers[strings.ToLower(k)] = strings.Join(r.Header.Values(k), ",")
	}
	bs := h.cfg.ExtAuthz.GetWithRequestBody()
	sent := body
	if bs != nil && int64(len(sent)) > int64(bs.GetMaxRequestBytes()) {
		sent = sent[:bs.GetMaxRequestBytes()]
	}
	httpReq := &envoy_service_auth_v3.AttributeContext_HttpRequest{
		Id:       r.Header.Get("x-request-id"),
		Method:   r.Method,
		Headers:  headers,
		Path:     r.URL.RequestURI(),
		Host:     r.Host,
		Scheme:   "http",
		Protocol: r.Proto,
		Size:     int64(len(body)),
	}
	if bs != nil {
		if bs.GetPackAsBytes() {
			httpReq.RawBody = sent
		} else {
			httpReq.Body = string(sent)
		}
	}
	req := &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Request: &envoy_service_auth_v3.AttributeContext_Request{Time: timestamppb.Now(), Http: httpReq},
	}}
	if per != nil {
		req.Attributes.ContextExtensions = per.GetCheckSettings().GetContextExtensions()
	}
	if host, port, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		p, _ := strconv.Atoi(port)
		req.Attributes.Source = &envoy_service_auth_v3.AttributeContext_Peer{Address: &envoy_config_core_v3.Address{
			Address: &envoy_config_core_v3.Address_SocketAddress{SocketAddress: &envoy_config_core_v3.SocketAddress{
				Address: host, PortSpecifier: &envoy_config_core_v3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}
	}
	return req
}

// hopByHop headers are not forwarded (RFC 9110 §7.6.1).
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// routeTimeout is Envoy's route timeout: 15 s when the route sets none, no
// limit when it sets 0. It covers the whole upstream response, streamed or not.
func routeTimeout(route *envoy_config_route_v3.Route) time.Duration {
	t := route.GetRoute().GetTimeout()
	if t == nil {
		return 15 * time.Second
	}
	return t.AsDuration()
}

func (h *Harness) forward(w http.ResponseWriter, r *http.Request, cluster string, timeout time.Duration, body []byte) {
	base, ok := h.cfg.Upstreams[cluster]
	if !ok {
		http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
		return
	}
	ctx := r.Context()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	out, err := http.NewRequestWithContext(ctx, r.Method, strings.TrimSuffix(base, "/")+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, "bad upstream request", http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	for _, k := range hopByHop {
		out.Header.Del(k)
	}
	out.Host = r.Host
	resp, err := h.client.Do(out)
	switch {
	case err != nil && ctx.Err() != nil:
		http.Error(w, "upstream request timeout", http.StatusGatewayTimeout)
		return
	case err != nil:
		http.Error(w, "upstream connect error", http.StatusServiceUnavailable)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	// Envoy streams the response: each chunk goes on as it arrives (an SSE
	// stream, an MCP server's answer) rather than when the upstream is done.
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			// Envoy resets the downstream stream when the upstream one fails
			// mid-response (the route timeout included): the client sees a
			// cut response, not a complete one.
			panic(http.ErrAbortHandler)
		}
	}
}
