// Package envoy holds the Envoy bootstrap files we ship (bootstrap-ads.yaml for
// an egress Envoy fed by `aisecops xds`, bootstrap-static.yaml for one that runs
// without the control plane; each plaintext for the loopback defaults, and a
// -tls.yaml twin with mTLS to the control plane or the authz service). Its
// tests check every Envoy YAML under envoy/ and deploy/ against Envoy's API
// protos, and every TLS cluster to our gRPC servers against
// envoyconfig.CheckMTLSCluster; it has no runtime code.
package envoy
