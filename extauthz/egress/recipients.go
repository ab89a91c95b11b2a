package egress

import (
	"maps"
	"mime"
	"net/mail"
	"slices"
	"strings"

	"golang.org/x/net/idna"
)

// Recipient values. Mail libraries and SMTP relays disagree on which address
// a string such as `a@evil.test <b@example.com>` means, so a destination value
// naming a recipient is read two independent ways and allowed only when both
// readings agree and every domain either names is allowed:
//
//   - as an RFC 5322 address list (net/mail), after turning ';' between
//     addresses into ',' and dropping "mailto:" before an address; a value
//     that is one mailto: URI is percent-decoded and its to, cc and bcc
//     fields join the list;
//   - by a scan of the value and of each view the canonical chain gives of it
//     (percent-decoding, backslash escapes, Unicode folding — '＠' is '@' —
//     and RFC 2047 encoded-words): the text after every '@' is a recipient
//     domain, whether it sits in a display name, a comment, a quoted string,
//     a source route or a mailto: field.
//
// A value that does not parse, whose parsed domains differ from the scanned
// ones, whose encodings cannot be seen through, or whose local part carries
// routing syntax (a '!' bang path, a '%' hack naming a host) is a
// "recipient_ambiguous" finding; an address whose domain is not allowed is a
// "destination_arg" finding. Either is a destination violation.
//
// Decisions, so that they are not rediscovered:
//   - A recipient domain equal to or under an allowed destination is allowed
//     (example.com allows mail.example.com), as before. Hosts (Host,
//     :authority, URLs) are stricter and unchanged: exact, or "*." patterns.
//   - Domains compare after UTS 46 mapping to ASCII, so upper case, full-width
//     forms and punycode spellings of one name are one name; a lookalike
//     (exämple.com, xn--exmple-cua.com) is another name.
//   - `"a@evil.test"@example.com` is denied: RFC 5322 delivers to example.com,
//     but a stack that unquotes and re-parses delivers to evil.test.
//   - A trailing dot (bob@example.com.) is denied: net/mail rejects it, so the
//     readings cannot agree.
//   - An '@' with nothing domain-like after it ("@alice", "Bob @ home") names
//     the empty domain, which nothing allows, unless the whole value equals a
//     configured destination (a chat handle).

// recipientViews returns v and the views of it that the canonical chain and
// RFC 2047 decoding give, and false when they do not reach a fixed point
// within maxDepth steps or an encoded-word names a charset we cannot read.
func recipientViews(v string, maxDepth int) ([]string, bool) {
	var dec mime.WordDecoder
	views := []string{v}
	for cur := v; ; {
		next, err := nextView(cur, &dec)
		if err != nil {
			return views, false
		}
		if next == cur {
			return views, true
		}
		if len(views) > maxDepth {
			return views, false
		}
		views = append(views, next)
		cur = next
	}
}

func nextView(w string, dec *mime.WordDecoder) (string, error) {
	if n, _ := canonical([]byte(w)); n != nil {
		return string(n), nil
	}
	if !strings.Contains(w, "=?") {
		return w, nil
	}
	return dec.DecodeHeader(w)
}

// destDomain canonicalises a domain for comparison: lower case, one trailing
// dot dropped, then UTS 46 mapped to ASCII. A name that does not map (an
// address literal, an underscore) compares as written.
func destDomain(d string) string {
	d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		return a
	}
	return d
}

// recipient is what the scan found around one '@'.
type recipient struct {
	addr   string // local@domain spelt as the email detector spells it, for the hash
	domain string // destDomain of the domain
	routed bool   // the local part carries routing syntax
}

func recipientDomainChar(c byte) bool {
	return isAlnum(c) || c == '.' || c == '-' || c == '_' || c >= 0x80
}

// scanRecipients calls f for every '@' in w. The search resumes after the
// domain, so it runs in linear time.
func scanRecipients(w string, f func(recipient)) {
	for i := 0; i < len(w); {
		k := strings.IndexByte(w[i:], '@')
		if k < 0 {
			return
		}
		at := i + k
		ls := at
		for ls > 0 && at-ls < 64 && (localChar(w[ls-1]) || w[ls-1] == '!') {
			ls--
		}
		de := at + 1
		if de < len(w) && w[de] == '[' {
			if e := strings.IndexByte(w[de:], ']'); e > 0 {
				de += e + 1
			}
		} else {
			for de < len(w) && recipientDomainChar(w[de]) {
				de++
			}
		}
		i = max(de, at+1)
		local, dom := w[ls:at], w[at+1:de]
		f(recipient{
			addr:   strings.ToLower(strings.TrimLeft(local[strings.LastIndexByte(local, '!')+1:], ".") + "@" + strings.TrimRight(dom, ".-")),
			domain: destDomain(dom),
			routed: routedLocal(local),
		})
	}
}

// routedLocal reports a local part that a relay may read as a route to
// another host: a UUCP bang path (host!user) or the '%' hack (user%host).
func routedLocal(local string) bool {
	pct := strings.LastIndexByte(local, '%')
	return strings.IndexByte(local, '!') >= 0 || pct >= 0 && strings.IndexByte(local[pct:], '.') >= 0
}

// recipientList rewrites the separators people and tools use that RFC 5322
// does not: ';' between addresses becomes ',' (a ';' ending a group stays and
// gains a ','), and "mailto:" before an address is dropped. A value that is
// one mailto: URI is percent-decoded and its to, cc and bcc fields appended.
func recipientList(v string) string {
	v = strings.TrimSpace(v)
	if len(v) >= 7 && strings.EqualFold(v[:7], "mailto:") {
		to, query, _ := strings.Cut(v[7:], "?")
		parts := []string{string(percentDecode([]byte(to)))}
		for _, field := range strings.Split(query, "&") {
			name, val, _ := strings.Cut(field, "=")
			switch strings.ToLower(string(percentDecode([]byte(name)))) {
			case "to", "cc", "bcc":
				parts = append(parts, string(percentDecode([]byte(val))))
			}
		}
		v = strings.Join(parts, ",")
	}
	var b strings.Builder
	comment, quoted, angle, group, start := 0, false, false, false, true
	for i := 0; i < len(v); i++ {
		c := v[i]
		if start && c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			start = false
			if len(v)-i >= 7 && strings.EqualFold(v[i:i+7], "mailto:") {
				i += 6
				continue
			}
		}
		switch {
		case quoted || comment > 0:
			switch {
			case c == '\\' && i+1 < len(v):
				b.WriteByte(c)
				i++
				c = v[i]
			case quoted && c == '"':
				quoted = false
			case !quoted && c == '(':
				comment++
			case !quoted && c == ')':
				comment--
			}
		case c == '"':
			quoted = true
		case c == '(':
			comment = 1
		case angle:
			angle = c != '>'
		case c == '<':
			angle, start = true, true
		case c == ':':
			if !group {
				group, start = true, true
			}
		case c == ',':
			start = true
		case c == ';':
			start = true
			if group {
				group = false
				b.WriteString(";,")
				continue
			}
			c = ','
		}
		b.WriteByte(c)
	}
	return b.String()
}

// isURLValue reports a value that starts with a URL other than mailto:.
func isURLValue(v string) bool {
	i := strings.Index(v, "://")
	if i <= 0 || !isAlpha(v[0]) {
		return false
	}
	for j := 1; j < i; j++ {
		if !schemeChar(v[j]) {
			return false
		}
	}
	return true
}

// checkRecipients checks a destination value in which some view has an '@'.
func (s *scan) checkRecipients(v string, views []string) {
	const loc = "arguments"
	allowed := map[string]bool{}
	bad := map[string]bool{}
	scanned := map[string]bool{}
	ambiguous := false
	for _, w := range views {
		scanRecipients(w, func(r recipient) {
			scanned[r.domain] = true
			ambiguous = ambiguous || r.routed
			if s.allowedDest(r.domain) {
				allowed[r.addr] = true
			} else {
				bad[r.addr] = true
			}
		})
	}
	if isURLValue(v) {
		// A URL is not a recipient list: its host is checked as before, and
		// the scan above has checked every address in it (a to= parameter,
		// userinfo).
		for _, p := range splitDest(v) {
			if strings.Contains(p, "://") || !strings.Contains(p, "@") {
				s.checkDest(p)
			}
		}
	} else {
		list, err := mail.ParseAddressList(recipientList(v))
		parsed := map[string]bool{}
		for _, a := range list {
			at := strings.LastIndexByte(a.Address, '@')
			d := destDomain(a.Address[at+1:])
			parsed[d] = true
			// A quoted local part hides routing syntax from the scan.
			ambiguous = ambiguous || routedLocal(a.Address[:max(at, 0)])
			if !s.allowedDest(d) {
				bad[strings.ToLower(a.Address)] = true
			}
		}
		ambiguous = ambiguous || err != nil || !maps.Equal(parsed, scanned)
	}
	for _, a := range slices.Sorted(maps.Keys(bad)) {
		s.value("destination_arg", ClassDestination, loc, []byte(a), false)
	}
	if ambiguous {
		s.value("recipient_ambiguous", ClassDestination, loc, []byte(strings.ToLower(v)), false)
	}
	if len(bad) == 0 && !ambiguous {
		// An allowed recipient is not leaked personal data.
		if s.suppress == nil && len(allowed) > 0 {
			s.suppress = map[string]bool{}
		}
		for a := range allowed {
			s.suppress[s.in.hash([]byte(a))] = true
		}
	}
}
