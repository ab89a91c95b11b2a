// Package envoy holds the Envoy bootstrap files we ship (bootstrap-ads.yaml for
// an egress Envoy fed by `aisecops xds`, bootstrap-static.yaml for one that runs
// without the control plane). Its tests check every Envoy YAML under envoy/ and
// deploy/ against Envoy's API protos; it has no runtime code.
package envoy
