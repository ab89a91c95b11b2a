package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// newTracer builds the tracer of the Check path from the standard OTEL_*
// variables, or nil (tracing off, the default) when they ask for no OTLP
// export: OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn it off;
// OTEL_TRACES_EXPORTER=otlp, or an OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, turn
// it on. OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL picks grpc or http/protobuf (the
// specification's default); endpoints, headers, TLS and timeouts are read by
// the exporters themselves. The returned shutdown flushes what is buffered.
func newTracer(ctx context.Context, log *slog.Logger) (trace.Tracer, func(context.Context) error, error) {
	off := func(context.Context) error { return nil }
	env := func(k string) string { return strings.TrimSpace(os.Getenv(k)) }
	exporter := strings.ToLower(env("OTEL_TRACES_EXPORTER"))
	endpoint := env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") + env("OTEL_EXPORTER_OTLP_ENDPOINT")
	switch {
	case strings.EqualFold(env("OTEL_SDK_DISABLED"), "true"), exporter == "none":
		return nil, off, nil
	case exporter == "" && endpoint == "":
		return nil, off, nil
	case exporter != "" && exporter != "otlp":
		return nil, off, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: only otlp and none are supported", exporter)
	}
	protocol := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = env("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdktrace.SpanExporter
	var err error
	switch protocol {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "", "http/protobuf":
		protocol = "http/protobuf"
		exp, err = otlptracehttp.New(ctx)
	default:
		return nil, off, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: grpc or http/protobuf", protocol)
	}
	if err != nil {
		return nil, off, fmt.Errorf("otlp trace exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName("aisecops")))
	if err != nil {
		return nil, off, err
	}
	if name := env("OTEL_SERVICE_NAME"); name != "" {
		res, _ = resource.Merge(res, resource.NewSchemaless(semconv.ServiceName(name)))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	log.Info("OpenTelemetry tracing on", "protocol", protocol)
	return tp.Tracer("github.com/aisecops/aisecops-envoy/extauthz"), tp.Shutdown, nil
}
