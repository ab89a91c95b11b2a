package extauthz

import (
	"context"
	"strings"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing: a span per Check ("aisecops.check"), parented to the W3C trace
// context the agent's request carries (traceparent), so the agent's trace
// continues through the gateway, with a child span per stage. Stage spans are
// written when the Check ends, from the times the stages recorded, so the
// pipeline carries no tracing code and a server without a tracer
// (Config.Tracer nil, the default) pays nothing but one branch per stage.
// Attributes are the decision, the first reason, the tool, the agent and the
// run (run ids pass the same redaction as the audit record): never argument
// values.

var propagator = propagation.TraceContext{}

// headerCarrier reads a CheckRequest's headers for the propagator.
type headerCarrier struct {
	req *envoy_service_auth_v3.CheckRequest
}

func (c headerCarrier) Get(key string) string {
	hr := c.req.GetAttributes().GetRequest().GetHttp()
	if hm := hr.GetHeaderMap().GetHeaders(); len(hm) > 0 {
		for _, h := range hm {
			if strings.EqualFold(h.GetKey(), key) {
				if v := h.GetValue(); v != "" {
					return v
				}
				return string(h.GetRawValue())
			}
		}
		return ""
	}
	return hr.GetHeaders()[key]
}

func (c headerCarrier) Set(string, string) {}

func (c headerCarrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// parentContext is the span context the request's traceparent names (invalid
// when it carries none).
func parentContext(req *envoy_service_auth_v3.CheckRequest) trace.SpanContext {
	return trace.SpanContextFromContext(propagator.Extract(context.Background(), headerCarrier{req}))
}

// startSpan starts the Check's span when a tracer is configured.
func (s *Server) startSpan(ctx context.Context, o *outcome, req *envoy_service_auth_v3.CheckRequest) (context.Context, trace.Span) {
	if s.cfg.Tracer == nil {
		if sc := parentContext(req); sc.IsValid() {
			o.traceID = sc.TraceID().String()
		}
		return ctx, nil
	}
	o.timed = true
	ctx = propagator.Extract(ctx, headerCarrier{req})
	ctx, span := s.cfg.Tracer.Start(ctx, "aisecops.check", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(o.start))
	o.traceID = span.SpanContext().TraceID().String()
	return ctx, span
}

// endSpan writes the stage spans and ends the Check's span with the outcome's
// attributes.
func (s *Server) endSpan(ctx context.Context, span trace.Span, o *outcome) {
	if span == nil {
		return
	}
	start := o.start
	for _, st := range o.trace {
		_, child := s.cfg.Tracer.Start(ctx, "aisecops.stage."+st.Stage, trace.WithTimestamp(start))
		child.SetAttributes(attribute.String("aisecops.stage.result", st.Result))
		if st.Result != "ok" {
			child.SetStatus(codes.Error, st.Result)
		}
		child.End(trace.WithTimestamp(st.at))
		start = st.at
	}
	attrs := []attribute.KeyValue{attribute.String("aisecops.decision", o.verdict.Decision), attribute.Int("http.response.status_code", o.verdict.Status)}
	if len(o.verdict.Reasons) > 0 {
		attrs = append(attrs, attribute.String("aisecops.reason", o.verdict.Reasons[0].Code))
	}
	if o.plan != nil && o.plan.Route.Tool != "" {
		attrs = append(attrs, attribute.String("aisecops.tool", o.plan.Route.Tool))
	}
	if o.who != nil {
		run := o.who.Run.ID
		if in := s.cfg.Inspector; in != nil {
			run = in.Redact(run)
		}
		attrs = append(attrs, attribute.String("aisecops.agent", o.who.Agent.ID), attribute.String("aisecops.run", run))
	}
	attrs = append(attrs, attribute.String("aisecops.decision_id", o.id))
	span.SetAttributes(attrs...)
	if o.verdict.Decision != "allow" {
		span.SetStatus(codes.Error, o.verdict.Decision)
	}
	span.End(trace.WithTimestamp(time.Now()))
}
