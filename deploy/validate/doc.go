// Package validate proves the deployment files a platform team installs
// (deploy/helm, deploy/kubernetes, deploy/istio, deploy/envoy-gateway,
// deploy/observability) against the projects' own Go packages: Helm's chart
// loader, linter and renderer; strict decoding into the Kubernetes, Istio,
// Envoy Gateway, Gateway API and Prometheus Operator types; Envoy's API for
// the egress bootstrap; the collector's own config loader.
//
// It is a module of its own so that Helm, client-go and the mesh APIs never
// reach the product's module or binary. It may import the product's packages
// (through the replace in go.mod); the product must never import it.
package validate
