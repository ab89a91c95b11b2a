package egress

import (
	"bytes"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Canonicalisation. Every piece of text is inspected as written, then through
// a chain of whole-text views, each applying, where they change anything:
// percent-decoding, backslash unescaping (\uXXXX, \xXX, \/), and Unicode folding
// (format characters such as zero-width spaces and soft hyphens removed, then
// NFKC, which maps full-width forms to ASCII). The chain repeats, so
// percent-encoding twice is two links. On the last view of the chain, runs of
// the base64/base64url alphabet and of hex digits are decoded and, when the
// result is mostly printable text, inspected the same way one layer deeper.
//
// Work is bounded twice: a layer count (Limits.MaxDepth) and the total bytes
// all decoding may produce (Limits.MaxDecodedBytes). Passing either is an
// error: a request we cannot see through is denied, never waved on.

// minRun is the shortest base64 run decoded (12 bytes of text), minHexRun the
// shortest hex run (16 bytes).
const (
	minRun    = 16
	minHexRun = 32
)

// text inspects b and its canonical views.
func (s *scan) text(b []byte, loc string, depth int, m mask, derived bool) error {
	if len(b) == 0 {
		return nil
	}
	if err := s.canceled(); err != nil {
		return err
	}
	s.detect(b, loc, m, derived)
	n, label := canonical(b)
	if n != nil {
		if depth >= s.in.lim.MaxDepth {
			return errDepth
		}
		if err := s.charge(len(n)); err != nil {
			return err
		}
		return s.text(n, loc+label, depth+1, m, true)
	}
	return s.runs(b, loc, depth, m)
}

func (s *scan) charge(n int) error {
	s.budget -= n
	if s.budget < 0 {
		return errBudget
	}
	return s.canceled()
}

// canceled is errCanceled once the caller gave up on the request (its Check
// deadline passed): every decoding step stops there, so no body, however it is
// built, is scanned past the deadline.
func (s *scan) canceled() error {
	select {
	case <-s.req.Cancel:
		return errCanceled
	default:
		return nil
	}
}

// canonical returns the next view of b and a location label, or nil when no
// transformation applies.
func canonical(b []byte) ([]byte, string) {
	var label string
	out := b
	if hasPercent(out) {
		out = percentDecode(out)
		label += "+percent"
	}
	if hasEscape(out) {
		out = unescape(out)
		label += "+escape"
	}
	if needsFold(out) {
		out = fold(out)
		label += "+unicode"
	}
	if label == "" || bytes.Equal(out, b) {
		return nil, ""
	}
	return out, label
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func hasPercent(b []byte) bool {
	for i := bytes.IndexByte(b, '%'); i >= 0 && i+2 < len(b); {
		if _, ok := unhex(b[i+1]); ok {
			if _, ok := unhex(b[i+2]); ok {
				return true
			}
		}
		j := bytes.IndexByte(b[i+1:], '%')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

func percentDecode(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '%' && i+2 < len(b) {
			h, ok1 := unhex(b[i+1])
			l, ok2 := unhex(b[i+2])
			if ok1 && ok2 {
				out = append(out, h<<4|l)
				i += 2
				continue
			}
		}
		out = append(out, b[i])
	}
	return out
}

// hasEscape reports escapes that can hide characters (\u, \x, \/). Simple
// escapes alone (\n, \", \t) cannot join a value that the raw text splits, so
// JSON with only those costs no extra view.
func hasEscape(b []byte) bool {
	for i := bytes.IndexByte(b, '\\'); i >= 0 && i+1 < len(b); {
		switch b[i+1] {
		case 'u', 'x', '/', 'U':
			return true
		case '\\':
			i++ // an escaped backslash: skip its second half
		}
		j := bytes.IndexByte(b[i+1:], '\\')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		v, ok := unhex(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

// unescape decodes JSON and C-style backslash escapes; malformed ones stay.
func unescape(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' || i+1 >= len(b) {
			out = append(out, c)
			continue
		}
		e := b[i+1]
		switch e {
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case 'r':
			out = append(out, '\r')
		case 'b', 'f':
			out = append(out, ' ')
		case '"', '\\', '/', '\'':
			out = append(out, e)
		case 'x':
			if i+3 < len(b) {
				h, ok1 := unhex(b[i+2])
				l, ok2 := unhex(b[i+3])
				if ok1 && ok2 {
					out = append(out, h<<4|l)
					i += 3
					continue
				}
			}
			out = append(out, c, e)
		case 'u', 'U':
			r, ok := hex4(b[i+2:])
			if !ok {
				out = append(out, c, e)
				break
			}
			i += 4
			if utf16IsHigh(r) && i+6 < len(b) && b[i+2] == '\\' && (b[i+3] == 'u' || b[i+3] == 'U') {
				if lo, ok := hex4(b[i+4:]); ok && utf16IsLow(lo) {
					r = (r-0xD800)<<10 | (lo - 0xDC00) + 0x10000
					i += 6
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			out = append(out, c, e)
		}
		i++
	}
	return out
}

func utf16IsHigh(r rune) bool { return r >= 0xD800 && r < 0xDC00 }
func utf16IsLow(r rune) bool  { return r >= 0xDC00 && r < 0xE000 }

// needsFold reports non-ASCII text that folding would change: format
// characters, or text that is not in NFKC (full-width forms among others).
func needsFold(b []byte) bool {
	i := 0
	for i < len(b) && b[i] < utf8.RuneSelf {
		i++
	}
	if i == len(b) {
		return false
	}
	for j := i; j < len(b); {
		if b[j] < utf8.RuneSelf {
			j++
			continue
		}
		r, n := utf8.DecodeRune(b[j:])
		if r != utf8.RuneError && isFormat(r) {
			return true
		}
		j += n
	}
	return !norm.NFKC.IsNormal(b[i:])
}

func isFormat(r rune) bool {
	return unicode.Is(unicode.Cf, r) || (r >= 0xFE00 && r <= 0xFE0F) // and variation selectors
}

// fold removes format characters and applies NFKC. Full-width ASCII
// (U+FF01–FF5E) and the ideographic space are mapped here directly, so NFKC,
// which is far slower, runs only when other non-ASCII text needs it.
func fold(b []byte) []byte {
	out := make([]byte, 0, len(b))
	ascii := true
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			out = append(out, b[i])
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r >= 0xFF01 && r <= 0xFF5E:
			out = append(out, byte(r-0xFF01+0x21))
		case r == 0x3000:
			out = append(out, ' ')
		case r != utf8.RuneError && isFormat(r):
		default:
			out = append(out, b[i:i+n]...)
			ascii = false
		}
		i += n
	}
	if ascii || norm.NFKC.IsNormal(out) {
		return out
	}
	return norm.NFKC.Bytes(out)
}

// b64 maps both base64 alphabets (standard and URL-safe) to their values.
var b64 = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xFF
	}
	const std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(std); i++ {
		t[std[i]] = byte(i)
	}
	t['-'] = 62
	t['_'] = 63
	return t
}()

func isB64(c byte) bool { return b64[c] != 0xFF }
func isHex(c byte) bool { _, ok := unhex(c); return ok }

// decodeB64 decodes either alphabet, ignoring padding and a trailing partial
// group.
func decodeB64(out, run []byte) []byte {
	out = out[:0]
	var acc uint32
	var bits uint
	for _, c := range run {
		v := b64[c]
		if v == 0xFF {
			continue
		}
		acc = acc<<6 | uint32(v)
		bits += 6
		if bits >= 8 {
			bits -= 8
			out = append(out, byte(acc>>bits))
		}
	}
	return out
}

func upperAndLower(run []byte) bool {
	var u, l bool
	for _, c := range run {
		u = u || isUpper(c)
		l = l || c >= 'a' && c <= 'z'
	}
	return u && l
}

func decodeHex(out, run []byte) []byte {
	out = out[:0]
	for i := 0; i+1 < len(run); i += 2 {
		h, _ := unhex(run[i])
		l, _ := unhex(run[i+1])
		out = append(out, h<<4|l)
	}
	return out
}

// printable reports decoded bytes that read as text: valid UTF-8 with at most
// one control character in ten. Random bytes (a hash, an image) fail.
func printable(b []byte) bool {
	if len(b) < 8 || !utf8.Valid(b) {
		return false
	}
	ctl := 0
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' || c == 0x7F {
			ctl++
		}
	}
	return ctl*10 <= len(b)
}

// runs decodes base64 and hex runs of the final view.
func (s *scan) runs(b []byte, loc string, depth int, m mask) error {
	for i := 0; i < len(b); {
		if !isB64(b[i]) {
			i++
			continue
		}
		j := i
		for j < len(b) && isB64(b[j]) {
			j++
		}
		run := b[i:j]
		for j < len(b) && b[j] == '=' {
			j++
		}
		if len(run) >= minRun {
			if err := s.decodeRun(run, loc, depth, m); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}

func (s *scan) decodeRun(run []byte, loc string, depth int, m mask) error {
	try := func(dec []byte, label string) (bool, error) {
		s.decBuf = dec[:0] // reuse the scratch next time
		if err := s.charge(len(dec)); err != nil {
			return false, err
		}
		if !printable(dec) {
			return false, nil
		}
		if depth >= s.in.lim.MaxDepth {
			return true, errDepth
		}
		// The recursion decodes into the scratch again: give it its own copy.
		own := append([]byte(nil), dec...)
		return true, s.text(own, loc+label, depth+1, m, true)
	}
	// Hex first: every hex run is also base64, but not usefully.
	if len(run) >= minHexRun {
		for i := 0; i < len(run); {
			if !isHex(run[i]) {
				i++
				continue
			}
			j := i
			for j < len(run) && isHex(run[j]) {
				j++
			}
			if h := run[i:j]; len(h) >= minHexRun {
				if ok, err := try(decodeHex(s.decBuf, h[:len(h)&^1]), "+hex"); ok || err != nil {
					if err != nil {
						return err
					}
					if i == 0 && j == len(run) {
						return nil
					}
				}
			}
			i = j
		}
	}
	if !upperAndLower(run) {
		// Encoded text has both cases; a lower-case word, a path or a UUID
		// does not, and is most of what a JSON body's runs are.
		return nil
	}
	ok, err := try(decodeB64(s.decBuf, run), "+base64")
	if ok || err != nil {
		return err
	}
	// A run may start with a path or a word that is not part of the encoded
	// value ("/upload/QUtJ..."): try its '/'-separated segments.
	if bytes.IndexByte(run, '/') >= 0 {
		for _, seg := range bytes.Split(run, []byte{'/'}) {
			if len(seg) >= minRun {
				if _, err := try(decodeB64(s.decBuf, seg), "+base64"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
