package plan

import (
	"bytes"
	"strings"
	"unicode/utf8"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// requestLine fills Method, Host, Path and RawPath from the pseudo headers, with
// Envoy's attribute fields as the fallback. Where both are present they must
// agree: two views of one request line are an ambiguity we refuse to resolve.
func requestLine(p *Plan, h *headers, hr *envoy_service_auth_v3.AttributeContext_HttpRequest) error {
	pick := func(s single, field, name string) (string, error) {
		if s.n > 1 {
			return "", reason.New(reason.BadRequest, "header %s sent more than once", name)
		}
		switch {
		case s.n == 0:
			return field, nil
		case field != "" && field != s.v:
			return "", reason.New(reason.BadRequest, "header %s disagrees with the request", name)
		}
		return s.v, nil
	}
	if !validUTF8Fields(hr) {
		return reason.New(reason.BadRequest, "request line is not valid UTF-8")
	}
	method, err := pick(h.method, hr.GetMethod(), hMethod)
	if err != nil {
		return err
	}
	if !validMethod(method) {
		return reason.New(reason.BadRequest, "request method is not valid")
	}
	p.Method = method

	rawPath, err := pick(h.path, hr.GetPath(), hPath)
	if err != nil {
		return err
	}
	if p.Path, err = NormalizePath(rawPath); err != nil {
		return err
	}
	p.RawPath = rawPath
	if _, q, ok := strings.Cut(rawPath, "?"); ok {
		q, _, _ = strings.Cut(q, "#")
		p.Query = q
	}

	authority, err := pick(h.authority, hr.GetHost(), hAuthority)
	if err != nil {
		return err
	}
	host, err := pick(h.host, "", hHost)
	if err != nil {
		return err
	}
	switch {
	case authority == "":
		authority = host
	case host != "" && !strings.EqualFold(host, authority):
		// HTTP/2 with a host header naming another server than :authority:
		// upstreams differ on which they believe.
		return reason.New(reason.BadRequest, "host and :authority disagree")
	}
	if p.Host, err = NormalizeHost(authority); err != nil {
		return err
	}
	return nil
}

func validUTF8Fields(hr *envoy_service_auth_v3.AttributeContext_HttpRequest) bool {
	return utf8.ValidString(hr.GetMethod()) && utf8.ValidString(hr.GetPath()) && utf8.ValidString(hr.GetHost())
}

func validMethod(m string) bool {
	if m == "" || len(m) > 32 {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// NormalizePath returns the path an upstream will route raw to (see the package
// doc for the exact rules). Errors are bad_request.
func NormalizePath(raw string) (string, error) {
	bad := func(msg string) (string, error) { return "", reason.New(reason.BadRequest, "%s", msg) }
	if raw == "" {
		return bad("request path is missing")
	}
	if raw == "*" {
		return raw, nil
	}
	if raw[0] != '/' {
		return bad("request path must start with /")
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= ' ' || c >= 0x7f {
			return bad("request path has a control, space or non-ASCII byte")
		}
	}
	p := raw
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if strings.IndexByte(p, '%') < 0 && strings.IndexByte(p, '\\') < 0 &&
		!strings.Contains(p, "//") && !strings.Contains(p, "/.") {
		return p, nil // already normal: the common case allocates nothing
	}

	decoded := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '\\':
			decoded = append(decoded, '/')
			continue
		case '%':
		default:
			decoded = append(decoded, c)
			continue
		}
		if i+2 >= len(p) || unhex(p[i+1]) < 0 || unhex(p[i+2]) < 0 {
			return bad("request path has a malformed percent escape")
		}
		v := byte(unhex(p[i+1])<<4 | unhex(p[i+2]))
		i += 2
		switch {
		case v == '/' || v == '\\':
			decoded = append(decoded, '/')
		case unreserved(v):
			decoded = append(decoded, v)
		default:
			decoded = append(decoded, '%', upperHex[v>>4], upperHex[v&0xf])
		}
	}

	// Merge slashes and remove dot segments in one pass over the segments.
	out := make([]byte, 0, len(decoded)+1)
	trailing := false
	for seg := range strings.SplitSeq(string(decoded[1:]), "/") {
		switch seg {
		case "":
			trailing = true
			continue
		case ".":
			trailing = true
			continue
		case "..":
			if j := bytes.LastIndexByte(out, '/'); j >= 0 {
				out = out[:j]
			}
			trailing = true
			continue
		}
		out = append(out, '/')
		out = append(out, seg...)
		trailing = false
	}
	if len(out) == 0 || trailing {
		out = append(out, '/')
	}
	return string(out), nil
}

const upperHex = "0123456789ABCDEF"

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// unreserved is RFC 3986's unreserved set: decoding these never changes meaning.
func unreserved(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

func errBadHost() error { return reason.New(reason.BadRequest, "request host is not valid") }

// NormalizeHost lowercases an authority and strips its port, IPv6 brackets and
// one trailing dot ("Example.COM.:443" → "example.com"). Errors are bad_request.
func NormalizeHost(authority string) (string, error) {
	bad := errBadHost
	if authority == "" || len(authority) > 255+8 {
		return "", bad()
	}
	var host, port string
	if authority[0] == '[' {
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			return "", bad()
		}
		host, port = authority[1:end], authority[end+1:]
		if port != "" && port[0] != ':' {
			return "", bad()
		}
		if host == "" {
			return "", bad()
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F') || c == ':' || c == '.') {
				return "", bad()
			}
		}
	} else {
		host = authority
		if i := strings.IndexByte(authority, ':'); i >= 0 {
			host, port = authority[:i], authority[i:]
		}
		host = strings.TrimSuffix(host, ".")
		if host == "" {
			return "", bad()
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || c == '.' || c == '-' || c == '_') {
				return "", bad()
			}
		}
	}
	if port != "" {
		digits := port[1:]
		if len(digits) > 5 {
			return "", bad()
		}
		for i := 0; i < len(digits); i++ {
			if digits[i] < '0' || digits[i] > '9' {
				return "", bad()
			}
		}
	}
	return strings.ToLower(host), nil
}
