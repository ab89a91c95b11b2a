// Package integration drives the built aisecops binary from outside, only over
// the network and the command line, the way an operator and Envoy do. It must
// not import the authz server or the stores.
package integration
