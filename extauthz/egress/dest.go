package egress

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
)

// Destination controls. Every host the request names must agree with the
// route: Host, :authority, X-Forwarded-Host, and the host of every URL in the
// path, query, body (not on llm routes: a prompt is not a fetch) and the
// tool's arguments. A host agrees when it equals the route host or an allowed
// host; anything else is a "destination" finding, and an IP literal in any
// spelling (decimal integer, hex, octal, shortened, IPv6, IPv4-mapped) is one
// even when it would resolve to the route's address. Exact configured spellings
// are the only escape: a route configured on an IP may name that IP.

// normHost lowercases, strips a port, brackets' surroundings are kept for
// IPv6, and a trailing dot is dropped.
func normHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	if strings.HasPrefix(h, "[") {
		if e := strings.IndexByte(h, ']'); e > 0 {
			return h[:e+1]
		}
		return h
	}
	if strings.Count(h, ":") == 1 {
		h = h[:strings.IndexByte(h, ':')]
	}
	return strings.TrimSuffix(h, ".")
}

func normHostPattern(h string) string {
	if strings.HasPrefix(h, "*.") {
		return "*." + normHost(h[2:])
	}
	return normHost(h)
}

// allowedHost reports h (normalised) against the route host and allowed
// hosts. With neither configured nothing can be compared; only the IP and
// internal-name checks apply then.
func (s *scan) allowedHost(h string) bool {
	if len(s.hosts) == 0 {
		return true
	}
	for _, a := range s.hosts {
		if a == h || strings.HasPrefix(a, "*.") && strings.HasSuffix(h, a[1:]) && !isIPLiteral(h) {
			return true
		}
	}
	return false
}

// checkHost records the findings for one named host. det names what was
// wrong when the host is simply elsewhere.
func (s *scan) checkHost(host, det, loc string, derived bool) {
	h := normHost(host)
	if h == "" {
		return
	}
	exact := false
	for _, a := range s.hosts {
		exact = exact || a == h
	}
	if exact {
		return
	}
	if addr, ok := parseIP(h); ok {
		s.value("ip_literal", ClassDestination, loc, []byte(h), derived)
		if internalAddr(addr) {
			s.value("internal_address", ClassDestination, loc, []byte(h), derived)
		}
		return
	}
	if isIPLiteral(h) {
		s.value("ip_literal", ClassDestination, loc, []byte(h), derived)
		return
	}
	if internalName(h) {
		s.value("internal_host", ClassDestination, loc, []byte(h), derived)
	}
	if !s.allowedHost(h) {
		s.value(det, ClassDestination, loc, []byte(h), derived)
	}
}

// checkHosts compares the request's own host fields with the route.
func (s *scan) checkHosts() {
	req := s.req
	host := req.Host
	if host == "" {
		host = req.Headers["host"]
	}
	if host != "" && req.Authority != "" && normHost(host) != normHost(req.Authority) {
		s.shape("host_authority_mismatch", ClassDestination, "host")
	}
	s.checkHost(host, "host_not_allowed", "host", false)
	s.checkHost(req.Authority, "host_not_allowed", "authority", false)
	for _, n := range []string{"x-forwarded-host", "x-original-host", "x-host"} {
		if v, ok := req.Headers[n]; ok {
			for _, h := range strings.Split(v, ",") {
				s.checkHost(h, "host_not_allowed", "header:"+n, false)
			}
		}
	}
}

// parseIP parses every spelling an HTTP client or resolver accepts as an
// address: IPv6 (bracketed or not, with a zone), and IPv4 the way inet_aton
// reads it: one to four parts, each decimal, 0x-hex or 0-led octal, the last
// part filling the remaining bytes (2130706433, 0x7f.1, 017.0.0.1, 127.1).
func parseIP(h string) (netip.Addr, bool) {
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if strings.Contains(h, ":") {
		if z := strings.IndexByte(h, '%'); z >= 0 {
			h = h[:z]
		}
		a, err := netip.ParseAddr(h)
		return a, err == nil
	}
	parts := strings.Split(h, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var vals [4]uint64
	for i, p := range parts {
		v, ok := atonPart(p)
		if !ok {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	n := len(parts)
	for i := 0; i < n-1; i++ {
		if vals[i] > 0xFF {
			return netip.Addr{}, false
		}
	}
	if vals[n-1] >= 1<<(8*(5-n)) {
		return netip.Addr{}, false
	}
	var ip uint32
	for i := 0; i < n-1; i++ {
		ip |= uint32(vals[i]) << (24 - 8*i)
	}
	ip |= uint32(vals[n-1])
	return netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), true
}

func atonPart(p string) (uint64, bool) {
	if p == "" || len(p) > 12 {
		return 0, false
	}
	base := 10
	switch {
	case len(p) > 1 && (p[1] == 'x' || p[1] == 'X') && p[0] == '0':
		base, p = 16, p[2:]
		if p == "" {
			return 0, true
		}
	case len(p) > 1 && p[0] == '0':
		base, p = 8, p[1:]
	}
	v, err := strconv.ParseUint(p, base, 64)
	return v, err == nil
}

// isIPLiteral also catches numeric spellings that overflow or use invalid
// digits ("08.1", "0x1ffffffffff"): a resolver may still treat them as
// addresses, and no real host name is all numeric labels.
func isIPLiteral(h string) bool {
	if _, ok := parseIP(h); ok {
		return true
	}
	if strings.Contains(h, ":") {
		return false
	}
	for _, p := range strings.Split(h, ".") {
		if p == "" {
			return false
		}
		q := p
		if len(p) > 1 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') {
			q = p[2:]
			for i := 0; i < len(q); i++ {
				if !isHex(q[i]) {
					return false
				}
			}
			continue
		}
		for i := 0; i < len(q); i++ {
			if !isDigit(q[i]) {
				return false
			}
		}
	}
	return true
}

// internalAddr reports loopback, private, link-local (169.254.169.254, the
// cloud metadata address, among them), CGNAT, unspecified and multicast
// addresses, looking through IPv4-mapped and NAT64 forms.
func internalAddr(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is6() {
		b := a.As16()
		// 64:ff9b::/96 (NAT64) embeds an IPv4 address.
		if b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && bytes.Equal(b[4:12], make([]byte, 8)) {
			return internalAddr(netip.AddrFrom4([4]byte(b[12:])))
		}
	}
	if a.Is4() && netip.MustParsePrefix("100.64.0.0/10").Contains(a) {
		return true
	}
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast()
}

// internalName reports names that resolve to this machine or to a cloud
// metadata service.
func internalName(h string) bool {
	switch h {
	case "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata",
		"metadata.google.internal", "instance-data", "instance-data.ec2.internal", "metadata.azure.com":
		return true
	}
	return strings.HasSuffix(h, ".localhost")
}

func isAlpha(c byte) bool    { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func schemeChar(c byte) bool { return isAlnum(c) || c == '+' || c == '-' || c == '.' }

// urlHost returns the host of the authority starting at i and the index
// after the authority.
func urlHost(b []byte, i int) (string, int) {
	j := i
	for j < len(b) && j-i < 512 && authorityChar(b[j]) {
		j++
	}
	auth := b[i:j]
	if at := bytes.LastIndexByte(auth, '@'); at >= 0 {
		auth = auth[at+1:]
	}
	if len(auth) > 0 && auth[0] == '[' {
		if e := bytes.IndexByte(auth, ']'); e > 0 {
			return string(auth[:e+1]), j
		}
		return "", j
	}
	if c := bytes.IndexByte(auth, ':'); c >= 0 {
		auth = auth[:c]
	}
	return string(auth), j
}

func authorityChar(c byte) bool {
	switch c {
	case '/', '?', '#', '\\', '"', '\'', '<', '>', '`', ' ', '\t', '\r', '\n', '{', '}', '|', '^', '(', ')', ',', ';':
		return false
	}
	return c > 0x20 && c != 0x7F
}

// checkDestinationArgs checks the tool's destination arguments against its
// destination allowlist. Allowed email recipients are remembered so the PII
// detector does not report them.
func (s *scan) checkDestinationArgs(body []byte) {
	if len(s.pol.DestinationArgs) == 0 {
		return
	}
	src := s.req.Arguments
	if len(src) == 0 {
		src = body
	}
	if len(src) == 0 {
		return
	}
	d := json.NewDecoder(bytes.NewReader(src))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return
	}
	s.walkArgs(v)
}

func (s *scan) isDestArg(k string) bool {
	for _, a := range s.pol.DestinationArgs {
		if strings.EqualFold(a, k) {
			return true
		}
	}
	return false
}

func (s *scan) walkArgs(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if s.isDestArg(k) {
				s.destValues(e, false)
			} else {
				s.walkArgs(e)
			}
		}
	case []any:
		for _, e := range t {
			s.walkArgs(e)
		}
	}
}

// destValues checks a destination argument's value: a string (possibly a
// comma- or semicolon-separated list), a list, or an object whose address- and
// URL-looking strings are checked (a {name, email} recipient).
func (s *scan) destValues(v any, inObject bool) {
	switch t := v.(type) {
	case string:
		s.destString(t, inObject)
	case json.Number:
		if !inObject {
			s.checkDest(t.String())
		}
	case bool:
		if !inObject {
			s.checkDest(strconv.FormatBool(t))
		}
	case []any:
		for _, e := range t {
			s.destValues(e, inObject)
		}
	case map[string]any:
		for _, e := range t {
			s.destValues(e, true)
		}
	}
}

// destString checks one string value. A value equal to a configured
// destination is allowed as written (a channel, a chat handle). A value in
// which any view has an '@' names recipients (see recipients.go); any other is
// a list of channels, hosts or URLs.
func (s *scan) destString(v string, inObject bool) {
	v = strings.TrimSpace(v)
	if v == "" || s.isDestEntry(v) {
		return
	}
	views, ok := recipientViews(v, s.in.lim.MaxDepth)
	if !ok {
		s.value("recipient_ambiguous", ClassDestination, "arguments", []byte(strings.ToLower(v)), false)
		return
	}
	for _, w := range views {
		if strings.Contains(w, "@") {
			s.checkRecipients(v, views)
			return
		}
	}
	for _, p := range splitDest(v) {
		if !inObject || strings.Contains(p, "://") {
			s.checkDest(p)
		}
	}
}

func splitDest(v string) []string {
	var out []string
	for _, p := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ';' }) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (s *scan) isDestEntry(v string) bool {
	for _, d := range s.pol.Destinations {
		if strings.EqualFold(strings.TrimSpace(d), v) {
			return true
		}
	}
	return false
}

// checkDest checks a value without an address: a URL's host, or a channel or
// host name.
func (s *scan) checkDest(v string) {
	v = strings.ToLower(strings.TrimSpace(v))
	const loc = "arguments"
	if strings.Contains(v, "://") {
		host, _ := urlHost([]byte(v), strings.Index(v, "://")+3)
		h := normHost(host)
		if h == "" || !s.allowedDest(h) {
			s.value("destination_arg", ClassDestination, loc, []byte(v), false)
		}
		if isIPLiteral(h) {
			s.value("ip_literal", ClassDestination, loc, []byte(h), false)
		}
		return
	}
	if s.isDestEntry(v) || strings.Contains(v, ".") && s.allowedDest(normHost(v)) {
		return
	}
	s.value("destination_arg", ClassDestination, loc, []byte(v), false)
}

// allowedDest reports a domain equal to or under an allowed destination, both
// compared as destDomain spells them. IP literals are never under anything.
func (s *scan) allowedDest(dom string) bool {
	dom = destDomain(dom)
	if dom == "" {
		return false
	}
	for _, d := range s.destDomains() {
		if dom == d || !isIPLiteral(dom) && strings.HasSuffix(dom, "."+d) {
			return true
		}
	}
	return false
}

// destDomains is the policy's destinations as allowedDest compares them,
// computed once per scan.
func (s *scan) destDomains() []string {
	if s.dests == nil {
		s.dests = []string{}
		for _, d := range s.pol.Destinations {
			d = strings.ToLower(strings.TrimSpace(d))
			d = strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(d, "*."), "."), "@")
			if d = destDomain(d); d != "" {
				s.dests = append(s.dests, d)
			}
		}
	}
	return s.dests
}
