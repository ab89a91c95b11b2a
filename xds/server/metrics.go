package server

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	pushes   *prometheus.CounterVec
	acks     *prometheus.CounterVec
	nacks    *prometheus.CounterVec
	version  *prometheus.GaugeVec
	rejected prometheus.Counter
	valid    prometheus.Gauge
	refused  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aisecops_xds_pushes_total",
			Help: "Snapshots set in the xDS cache, by rollout group."}, []string{"group"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aisecops_xds_acks_total",
			Help: "xDS responses ACKed, by type URL."}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aisecops_xds_nacks_total",
			Help: "xDS versions NACKed, counted once per node and version."}, []string{"type"}),
		version: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "aisecops_xds_version_info",
			Help: "1 for the version each node last ACKed."}, []string{"node", "version"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "aisecops_xds_config_rejected_total",
			Help: "Routes files rejected (the last good snapshot stays)."}),
		valid: prometheus.NewGauge(prometheus.GaugeOpts{Name: "aisecops_xds_config_valid",
			Help: "1 when the last routes file loaded was valid."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aisecops_xds_streams_refused_total",
			Help: "xDS streams ended by the server, by reason (certificate, node_identity, node_id, type_url, too_many_nodes)."}, []string{"reason"}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.pushes, m.acks, m.nacks, m.version, m.rejected, m.valid, m.refused} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
