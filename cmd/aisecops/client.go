package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
)

// apiClient is how the operator commands talk to a running server's HTTP
// API: a base URL and a bearer credential, never printed.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// clientFlags are the flags every API client command takes. The credential
// is --token (better: AISECOPS_TOKEN, which stays out of the process list),
// else --token-file, else the admin token the embedded default wrote to
// $AISECOPS_HOME/admin-token.
type clientFlags struct {
	server, token, tokenFile, home, caCert string
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	c := &clientFlags{}
	fs.StringVar(&c.server, "server", "http://"+defaultHTTPAddr, "the server's HTTP API")
	fs.StringVar(&c.token, "token", "", "API bearer credential (prefer AISECOPS_TOKEN; default: --token-file, then $AISECOPS_HOME/admin-token)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the API bearer credential")
	fs.StringVar(&c.home, "home", defaultHome(), "state directory (where the admin token is)")
	fs.StringVar(&c.caCert, "ca-cert", "", "CA certificate (PEM) to trust for an https --server")
	return c
}

// maxAPIResponse bounds what a client command reads from the server.
const maxAPIResponse = 64 << 20

func (c *clientFlags) client() (*apiClient, error) {
	u, err := url.Parse(c.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want http://host:port or https://host:port", c.server)
	}
	tok := strings.TrimSpace(c.token)
	for _, f := range []string{c.tokenFile, filepath.Join(c.home, "admin-token")} {
		if tok != "" || f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			if f == c.tokenFile {
				return nil, fmt.Errorf("--token-file: %w", err)
			}
			continue
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, errors.New("no API credential: set AISECOPS_TOKEN or --token-file (or run where $AISECOPS_HOME/admin-token is)")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if c.caCert != "" {
		pem, err := os.ReadFile(c.caCert)
		if err != nil {
			return nil, fmt.Errorf("--ca-cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-cert %s: no certificate", c.caCert)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &apiClient{base: strings.TrimRight(c.server, "/"), token: tok, http: &http.Client{Timeout: 2 * time.Minute, Transport: tr}}, nil
}

// apiError is an error answer of the API, as {"error":{"code","message"}}.
type apiError struct {
	Status  int
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Agents  []string `json:"agents,omitempty"`
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("server answered %d %s: %s", e.Status, e.Code, e.Message)
	if len(e.Agents) > 0 {
		msg += " (agents: " + strings.Join(e.Agents, ", ") + ")"
	}
	return terminalSafe(msg)
}

// get fetches path and decodes the JSON answer into v; an error answer is an
// *apiError.
func (c *apiClient) get(path string, v any) error {
	resp, err := c.do(path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxAPIResponse))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: unreadable answer: %w", path, err)
	}
	return nil
}

// do sends GET path with the credential; a non-200 answer is an *apiError.
func (c *apiClient) do(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", c.base, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var body struct{ Error apiError }
	if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body) != nil || body.Error.Code == "" {
		return nil, fmt.Errorf("server answered %s", resp.Status)
	}
	body.Error.Status = resp.StatusCode
	return nil, &body.Error
}

// terminalSafe shows agent-written text in a terminal: control characters
// (escape sequences that could rewrite the screen), line breaks and
// bidirectional overrides are written as Go escapes.
func terminalSafe(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if !strings.ContainsFunc(s, unsafeRune) {
		return s
	}
	var sb strings.Builder
	for _, r := range s {
		if unsafeRune(r) {
			q := fmt.Sprintf("%+q", string(r))
			sb.WriteString(q[1 : len(q)-1])
			continue
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func unsafeRune(r rune) bool {
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Bidi_Control)
}
