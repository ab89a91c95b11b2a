package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// recheckEvery is how long a certificate or CA read from disk is used before
// the files are read again. Rotation (cert-manager, a Secret update, a cron
// job rewriting the files) takes effect within this much time, with no
// restart; handshakes in between cost no file I/O.
const recheckEvery = time.Second

// fileBacked is a value parsed from files and re-parsed when their bytes
// change. A read or parse failure keeps the last good value (and is logged
// once per distinct error): a half-written rotation never takes a listener
// down.
type fileBacked[T any] struct {
	what  string
	paths []string
	parse func(data [][]byte) (T, error)
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	checked time.Time
	raw     [][]byte
	val     T
	lastErr string
}

// newFileBacked reads and parses paths now: a listener must not start with
// files it cannot use.
func newFileBacked[T any](what string, paths []string, parse func([][]byte) (T, error), log *slog.Logger) (*fileBacked[T], error) {
	f := &fileBacked[T]{what: what, paths: paths, parse: parse, log: log, now: time.Now}
	raw, err := f.read()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if f.val, err = parse(raw); err != nil {
		return nil, fmt.Errorf("%s %v: %w", what, paths, err)
	}
	f.raw, f.checked = raw, f.now()
	return f, nil
}

func (f *fileBacked[T]) read() ([][]byte, error) {
	raw := make([][]byte, len(f.paths))
	for i, p := range f.paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		raw[i] = b
	}
	return raw, nil
}

// get returns the current value, re-reading the files at most every
// recheckEvery.
func (f *fileBacked[T]) get() T {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if now.Sub(f.checked) < recheckEvery {
		return f.val
	}
	f.checked = now
	raw, err := f.read()
	if err == nil && equalAll(raw, f.raw) {
		return f.val
	}
	var v T
	if err == nil {
		v, err = f.parse(raw)
	}
	if err != nil {
		if err.Error() != f.lastErr {
			f.lastErr = err.Error()
			f.log.Error("TLS files unreadable; keeping the last good ones", "what", f.what, "files", f.paths, "err", err)
		}
		return f.val
	}
	f.raw, f.val, f.lastErr = raw, v, ""
	f.log.Info("TLS files reloaded", "what", f.what, "files", f.paths)
	return f.val
}

func equalAll(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func parseKeyPair(raw [][]byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return nil, err
	}
	return &c, nil
}

func parseCAs(raw [][]byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw[0]) {
		return nil, errors.New("no PEM certificate in the CA file")
	}
	return pool, nil
}

// serverTLS is the TLS configuration of one listener: its certificate, and
// with clientCA the CA that client certificates must chain to (auth says
// whether one is required). Both are re-read from disk when they change.
func serverTLS(name, certFile, keyFile, clientCA string, auth tls.ClientAuthType, nextProtos []string, log *slog.Logger) (*tls.Config, error) {
	kp, err := newFileBacked(name+" certificate", []string{certFile, keyFile}, parseKeyPair, log)
	if err != nil {
		return nil, err
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: nextProtos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get(), nil
		},
	}
	if clientCA == "" {
		return base, nil
	}
	cas, err := newFileBacked(name+" client CA", []string{clientCA}, parseCAs, log)
	if err != nil {
		return nil, err
	}
	base.ClientAuth = auth
	base.ClientCAs = cas.get()
	// The client CA is read per handshake through a per-client config, the
	// one way crypto/tls lets ClientCAs change while the listener runs.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = cas.get()
		return c, nil
	}
	return base, nil
}

// clientTLS is the TLS configuration of an authz replica dialing the control
// plane: its client certificate (re-read when it changes) and the CA of the
// control plane's certificate (read once).
func clientTLS(name, certFile, keyFile, serverCA string, log *slog.Logger) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if serverCA != "" {
		b, err := os.ReadFile(serverCA)
		if err != nil {
			return nil, fmt.Errorf("%s server CA: %w", name, err)
		}
		if cfg.RootCAs, err = parseCAs([][]byte{b}); err != nil {
			return nil, fmt.Errorf("%s server CA %s: %w", name, serverCA, err)
		}
	}
	if certFile != "" {
		kp, err := newFileBacked(name+" client certificate", []string{certFile, keyFile}, parseKeyPair, log)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get(), nil
		}
	}
	return cfg, nil
}
