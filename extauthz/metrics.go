package extauthz

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Check path's Prometheus series (AISecOps v1.0, section 19: operational and security metrics). Labels carry
// reason codes, tool names from the route and detector names: never values.
type metrics struct {
	decisions     *prometheus.CounterVec
	latency       prometheus.Histogram
	cumRisk       prometheus.Histogram
	budget        *prometheus.CounterVec
	findings      *prometheus.CounterVec
	storeErrors   *prometheus.CounterVec
	auditFailures prometheus.Counter
	routeVersion  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aisecops_decisions_total", Help: "Check decisions by decision, tool and first reason code.",
		}, []string{"decision", "tool", "reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aisecops_check_duration_seconds", Help: "Time to decide one Check.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3},
		}),
		cumRisk: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aisecops_cumulative_risk", Help: "Cumulative run risk including the decided step.",
			Buckets: []float64{0.25, 0.5, 1, 1.5, 2, 3, 5},
		}),
		budget: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aisecops_budget_violations_total", Help: "Checks refused because a run budget was spent.",
		}, []string{"budget"}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aisecops_egress_findings_total", Help: "Egress inspection findings by detector.",
		}, []string{"detector"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aisecops_store_errors_total", Help: "Run-state store operations that failed.",
		}, []string{"op"}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aisecops_audit_failures_total", Help: "Audit lines that could not be written (each turned its Check into a deny).",
		}),
		routeVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "aisecops_route_version_info", Help: "Route versions seen in Checks (1 = seen).",
		}, []string{"tool", "route_version"}),
	}
	if reg != nil {
		reg.MustRegister(m.decisions, m.latency, m.cumRisk, m.budget, m.findings, m.storeErrors, m.auditFailures, m.routeVersion)
	}
	return m
}
