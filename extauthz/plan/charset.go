package plan

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// Reading a body as text. The parser and the egress scanner look at UTF-8
// only, while the upstream may read the same bytes as UTF-16 or UTF-32:
// Python's json.loads(bytes) (FastAPI, Flask) detects the encoding from the
// first four bytes, whatever the Content-Type says, and Node's body parsers
// honour the charset parameter. DecodeText turns the body into the UTF-8 text
// those readers see, or refuses when they would not all see the same text.

// DefaultMaxTextBytes is the output limit DecodeText applies when maxOut is
// zero or negative: twice DefaultMaxBodyBytes, the most a body within that
// limit decodes to (Latin-1 doubles high bytes, UTF-16 grows by at most half).
const DefaultMaxTextBytes = 2 * DefaultMaxBodyBytes

// Charset is a character encoding DecodeText reads bodies in.
type Charset uint8

const (
	CharsetUTF8 Charset = iota // also US-ASCII, and any ASCII-only body
	CharsetUTF16LE
	CharsetUTF16BE
	CharsetUTF32LE
	CharsetUTF32BE
	CharsetLatin1 // ISO-8859-1: byte n is U+00nn
)

var charsetNames = [...]string{"utf-8", "utf-16le", "utf-16be", "utf-32le", "utf-32be", "iso-8859-1"}

func (c Charset) String() string {
	if int(c) < len(charsetNames) {
		return charsetNames[c]
	}
	return fmt.Sprintf("charset(%d)", uint8(c))
}

// Encoding is how DecodeText read a body. The zero Encoding means the text is
// the body itself, unchanged and not copied.
type Encoding struct {
	Charset Charset
	BOM     bool // a byte order mark was removed from the front
	// NULs reports that NUL characters were removed from the text. No JSON
	// parser accepts a raw NUL, so a body that had one is not a plan for any
	// upstream; the caller should not parse such text as one.
	NULs bool
}

// Plain reports whether the text is the body unchanged.
func (e Encoding) Plain() bool { return e == Encoding{} }

// String names the encoding for the audit line: "utf-16le+bom", "utf-8+nul".
func (e Encoding) String() string {
	s := e.Charset.String()
	if e.BOM {
		s += "+bom"
	}
	if e.NULs {
		s += "+nul"
	}
	return s
}

// Causes carried in the Err of DecodeText's *reason.Error, for errors.Is.
var (
	ErrCharset      = errors.New("unsupported or malformed charset parameter") // bad_request
	ErrAmbiguous    = errors.New("charset parameter disagrees with the body")  // bad_request
	ErrInvalidText  = errors.New("invalid text")                               // bad_plan
	ErrTextTooLarge = errors.New("decoded text over the limit")                // partial_body
)

// DecodeText returns the body as UTF-8 text the way a lenient upstream would
// read it, so that the parser and the scanner see what the upstream sees.
//
// The encoding is detected exactly as CPython's json.detect_encoding does: a
// UTF-32 byte order mark (00 00 FE FF, FF FE 00 00; checked first, so FF FE
// 00 00 is UTF-32LE), then a UTF-16 one (FE FF, FF FE), then UTF-8's (EF BB
// BF); without one, the NUL pattern of the first four bytes (RFC 4627 §3):
// 00 00 → UTF-32BE, 00 xx → UTF-16BE, xx 00 00 00 → UTF-32LE, xx 00 → UTF-16LE,
// and for a two-byte body 00 xx → UTF-16BE, xx 00 → UTF-16LE; anything else is
// UTF-8. One byte order mark is removed, as Python removes it.
//
// A charset parameter in contentType (utf-8, utf-16, utf-16le, utf-16be,
// utf-32, utf-32le, utf-32be, iso-8859-1/latin1, us-ascii, and their common
// spellings) must agree with that detection, because Python ignores it and
// Node obeys it: a body the two would read differently is ErrAmbiguous. So
// "utf-16" (either byte order) needs a UTF-16 mark or NUL pattern, "utf-8" and
// "us-ascii" forbid one, and a Latin-1 body with bytes over 0x7F that is also
// valid UTF-8 is ambiguous. An unknown charset, or one named twice, is
// ErrCharset.
//
// NUL characters are removed from the text (Encoding.NULs says so). That is
// what makes NUL-interleaved ASCII anywhere in a body, at either alignment,
// read as its UTF-16 (or UTF-32) decoding would: every ASCII character of such
// a reading is a byte next to NULs only, so a run of them in the reading is a
// run in the text. Non-ASCII UTF-16 inside a UTF-8 body stays bytes, which are
// usually invalid UTF-8, so the body is refused rather than misread.
//
// Unpaired surrogates, code points over U+10FFFF, a length that is not a
// whole number of code units, and invalid UTF-8 are ErrInvalidText (stricter
// than Python, which lets surrogates through). Text longer than maxOut bytes
// (DefaultMaxTextBytes when maxOut ≤ 0) is ErrTextTooLarge.
//
// Every error is a *reason.Error wrapping one of the Err* causes; its message
// never quotes the body. Valid UTF-8 without a byte order mark or NUL byte
// (the common case) is returned as is: text aliases raw, nothing is
// allocated. Time is linear in len(raw).
func DecodeText(raw []byte, contentType string, maxOut int) (text []byte, enc Encoding, err error) {
	if maxOut <= 0 {
		maxOut = DefaultMaxTextBytes
	}
	cs, bom := detectCharset(raw)
	want, err := declaredCharset(contentType)
	if err != nil {
		return nil, Encoding{}, err
	}
	enc = Encoding{Charset: cs, BOM: bom > 0}
	body := raw[bom:]
	switch want {
	case labelNone:
	case labelUTF8:
		if cs != CharsetUTF8 {
			return nil, Encoding{}, errAmbiguous(want, cs)
		}
	case labelASCII, labelLatin1:
		if cs != CharsetUTF8 || bom > 0 {
			return nil, Encoding{}, errAmbiguous(want, cs)
		}
		if i := firstNonASCII(body); i >= 0 {
			if want == labelASCII {
				return nil, Encoding{}, errInvalid("us-ascii", i)
			}
			if utf8.Valid(body) {
				// Python reads UTF-8 text, Node reads Latin-1 mojibake.
				return nil, Encoding{}, errAmbiguous(want, cs)
			}
			enc.Charset = CharsetLatin1
		}
	default:
		if !want.allows(cs) {
			return nil, Encoding{}, errAmbiguous(want, cs)
		}
	}

	switch enc.Charset {
	case CharsetUTF16LE, CharsetUTF16BE:
		text, enc.NULs, err = decodeUTF16(body, enc.Charset == CharsetUTF16BE, maxOut)
	case CharsetUTF32LE, CharsetUTF32BE:
		text, enc.NULs, err = decodeUTF32(body, enc.Charset == CharsetUTF32BE, maxOut)
	case CharsetLatin1:
		text, enc.NULs, err = decodeLatin1(body, maxOut)
	default:
		text, enc.NULs, err = decodeUTF8(body, maxOut)
	}
	if err != nil {
		return nil, Encoding{}, err
	}
	return text, enc, nil
}

// detectCharset is CPython's json.detect_encoding (Lib/json/__init__.py),
// returning the byte order mark's length as well.
func detectCharset(b []byte) (Charset, int) {
	switch {
	case len(b) >= 4 && b[0] == 0 && b[1] == 0 && b[2] == 0xFE && b[3] == 0xFF:
		return CharsetUTF32BE, 4
	case len(b) >= 4 && b[0] == 0xFF && b[1] == 0xFE && b[2] == 0 && b[3] == 0:
		return CharsetUTF32LE, 4
	case len(b) >= 2 && b[0] == 0xFE && b[1] == 0xFF:
		return CharsetUTF16BE, 2
	case len(b) >= 2 && b[0] == 0xFF && b[1] == 0xFE:
		return CharsetUTF16LE, 2
	case len(b) >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF:
		return CharsetUTF8, 3
	}
	switch {
	case len(b) >= 4 && b[0] == 0 && b[1] != 0:
		return CharsetUTF16BE, 0
	case len(b) >= 4 && b[0] == 0:
		return CharsetUTF32BE, 0
	case len(b) >= 4 && b[1] == 0 && (b[2] != 0 || b[3] != 0):
		return CharsetUTF16LE, 0
	case len(b) >= 4 && b[1] == 0:
		return CharsetUTF32LE, 0
	case len(b) == 2 && b[0] == 0:
		return CharsetUTF16BE, 0
	case len(b) == 2 && b[1] == 0:
		return CharsetUTF16LE, 0
	}
	return CharsetUTF8, 0
}

// label is what a charset parameter declares.
type label uint8

const (
	labelNone label = iota
	labelUTF8
	labelASCII
	labelLatin1
	labelUTF16 // either byte order
	labelUTF16LE
	labelUTF16BE
	labelUTF32
	labelUTF32LE
	labelUTF32BE
)

var labelNames = [...]string{"none", "utf-8", "us-ascii", "iso-8859-1", "utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be"}

// allows reports whether a body detected as c may carry the UTF-16 or UTF-32
// label l.
func (l label) allows(c Charset) bool {
	switch l {
	case labelUTF16:
		return c == CharsetUTF16LE || c == CharsetUTF16BE
	case labelUTF16LE:
		return c == CharsetUTF16LE
	case labelUTF16BE:
		return c == CharsetUTF16BE
	case labelUTF32:
		return c == CharsetUTF32LE || c == CharsetUTF32BE
	case labelUTF32LE:
		return c == CharsetUTF32LE
	case labelUTF32BE:
		return c == CharsetUTF32BE
	}
	return false
}

// charsetLabels are the spellings we accept, compared ASCII-case-insensitively
// (asciiEqualFold).
var charsetLabels = [...]struct {
	name string
	l    label
}{
	{"utf-8", labelUTF8}, {"utf8", labelUTF8},
	{"us-ascii", labelASCII}, {"ascii", labelASCII},
	{"iso-8859-1", labelLatin1}, {"iso8859-1", labelLatin1}, {"iso_8859-1", labelLatin1},
	{"latin1", labelLatin1}, {"latin-1", labelLatin1}, {"l1", labelLatin1},
	{"utf-16", labelUTF16}, {"utf16", labelUTF16},
	{"utf-16le", labelUTF16LE}, {"utf16le", labelUTF16LE},
	{"utf-16be", labelUTF16BE}, {"utf16be", labelUTF16BE},
	{"utf-32", labelUTF32}, {"utf32", labelUTF32},
	{"utf-32le", labelUTF32LE}, {"utf32le", labelUTF32LE},
	{"utf-32be", labelUTF32BE}, {"utf32be", labelUTF32BE},
}

// declaredCharset returns the label of contentType's charset parameter.
func declaredCharset(contentType string) (label, error) {
	name, ok, err := charsetParam(contentType)
	if err != nil || !ok {
		return labelNone, err
	}
	for _, c := range charsetLabels {
		if asciiEqualFold(name, c.name) {
			return c.l, nil
		}
	}
	return labelNone, reason.Wrap(reason.BadRequest, ErrCharset, "content type names an unsupported charset")
}

// charsetParam finds the charset parameter of a Content-Type value without
// allocating. Quoted strings are skipped whole, so a boundary="…;charset=…"
// declares nothing. Two charset parameters, or an unterminated quoted string,
// are an error: readers would disagree on which charset counts.
func charsetParam(ct string) (value string, found bool, err error) {
	malformed := func() (string, bool, error) {
		return "", false, reason.Wrap(reason.BadRequest, ErrCharset, "content type is malformed")
	}
	i := strings.IndexByte(ct, ';')
	if i < 0 {
		return "", false, nil
	}
	s := ct[i+1:]
	for s != "" {
		j := strings.IndexAny(s, "=;")
		if j < 0 {
			break // a last parameter without a value
		}
		if s[j] == ';' {
			s = s[j+1:]
			continue
		}
		name := trimOWS(s[:j])
		s = trimOWS(s[j+1:])
		var v string
		if s != "" && s[0] == '"' {
			k := 1
			for k < len(s) && s[k] != '"' {
				if s[k] == '\\' {
					k++
				}
				k++
			}
			if k >= len(s) {
				return malformed()
			}
			v, s = s[1:k], s[k+1:]
			if j := strings.IndexByte(s, ';'); j >= 0 {
				s = s[j+1:]
			} else {
				s = ""
			}
		} else if j := strings.IndexByte(s, ';'); j >= 0 {
			v, s = trimOWS(s[:j]), s[j+1:]
		} else {
			v, s = trimOWS(s), ""
		}
		if asciiEqualFold(name, "charset") {
			if found {
				return malformed()
			}
			value, found = v, true
		}
	}
	return value, found, nil
}

func trimOWS(s string) string { return strings.Trim(s, " \t") }

// asciiEqualFold is HTTP's case-insensitive comparison. strings.EqualFold
// would also fold "ſ" into "s", so "charſet" would declare a charset that
// every HTTP library ignores.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func errAmbiguous(l label, detected Charset) *reason.Error {
	return reason.Wrap(reason.BadRequest, fmt.Errorf("%w: declared %s, body reads as %s", ErrAmbiguous, labelNames[l], detected),
		"content type charset disagrees with the body's encoding")
}

func errInvalid(enc string, offset int) *reason.Error {
	return reason.Wrap(reason.BadPlan, fmt.Errorf("%w: %s at byte %d", ErrInvalidText, enc, offset),
		"body is not valid %s text", enc)
}

func errTooLarge(maxOut int) *reason.Error {
	return reason.Wrap(reason.PartialBody, fmt.Errorf("%w: more than %d bytes", ErrTextTooLarge, maxOut),
		"decoded body is over the size limit")
}

func firstNonASCII(b []byte) int {
	for i, c := range b {
		if c >= utf8.RuneSelf {
			return i
		}
	}
	return -1
}

// decodeUTF8 validates b and drops its NUL bytes; without any, b itself is
// the text.
func decodeUTF8(b []byte, maxOut int) ([]byte, bool, error) {
	if !utf8.Valid(b) {
		return nil, false, errInvalid("utf-8", invalidUTF8At(b))
	}
	if bytes.IndexByte(b, 0) < 0 {
		if len(b) > maxOut {
			return nil, false, errTooLarge(maxOut)
		}
		return b, false, nil
	}
	out := make([]byte, 0, min(len(b), maxOut))
	for _, c := range b {
		if c != 0 {
			out = append(out, c)
		}
	}
	if len(out) > maxOut {
		return nil, false, errTooLarge(maxOut)
	}
	return out, true, nil
}

func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

func decodeLatin1(b []byte, maxOut int) ([]byte, bool, error) {
	out := make([]byte, 0, min(2*len(b), maxOut+2))
	nuls := false
	for _, c := range b {
		switch {
		case c == 0:
			nuls = true
		case c < utf8.RuneSelf:
			out = append(out, c)
		default:
			out = append(out, 0xC0|c>>6, 0x80|c&0x3F)
		}
		if len(out) > maxOut {
			return nil, false, errTooLarge(maxOut)
		}
	}
	return out, nuls, nil
}

// decodeUTF16 decodes b, dropping U+0000. A UTF-16 code unit becomes at most
// three UTF-8 bytes, a surrogate pair (two units) four.
func decodeUTF16(b []byte, big bool, maxOut int) ([]byte, bool, error) {
	name := "utf-16le"
	if big {
		name = "utf-16be"
	}
	if len(b)%2 != 0 {
		return nil, false, errInvalid(name, len(b)-1)
	}
	unit := func(i int) rune {
		if big {
			return rune(b[i])<<8 | rune(b[i+1])
		}
		return rune(b[i+1])<<8 | rune(b[i])
	}
	out := make([]byte, 0, min(len(b)/2*3, maxOut+utf8.UTFMax))
	nuls := false
	for i := 0; i < len(b); i += 2 {
		r := unit(i)
		switch {
		case r == 0:
			nuls = true
			continue
		case r < utf8.RuneSelf:
			out = append(out, byte(r))
		case utf16.IsSurrogate(r):
			if r >= 0xDC00 || i+2 >= len(b) {
				return nil, false, errInvalid(name, i)
			}
			r2 := unit(i + 2)
			if r2 < 0xDC00 || r2 > 0xDFFF {
				return nil, false, errInvalid(name, i)
			}
			out = utf8.AppendRune(out, utf16.DecodeRune(r, r2))
			i += 2
		default:
			out = utf8.AppendRune(out, r)
		}
		if len(out) > maxOut {
			return nil, false, errTooLarge(maxOut)
		}
	}
	return out, nuls, nil
}

// decodeUTF32 decodes b, dropping U+0000. A code unit becomes at most four
// UTF-8 bytes.
func decodeUTF32(b []byte, big bool, maxOut int) ([]byte, bool, error) {
	name := "utf-32le"
	if big {
		name = "utf-32be"
	}
	if len(b)%4 != 0 {
		return nil, false, errInvalid(name, len(b)&^3)
	}
	out := make([]byte, 0, min(len(b), maxOut+utf8.UTFMax))
	nuls := false
	for i := 0; i < len(b); i += 4 {
		var u uint32
		if big {
			u = uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
		} else {
			u = uint32(b[i+3])<<24 | uint32(b[i+2])<<16 | uint32(b[i+1])<<8 | uint32(b[i])
		}
		switch {
		case u == 0:
			nuls = true
			continue
		case u > utf8.MaxRune || utf16.IsSurrogate(rune(u)):
			return nil, false, errInvalid(name, i)
		}
		out = utf8.AppendRune(out, rune(u))
		if len(out) > maxOut {
			return nil, false, errTooLarge(maxOut)
		}
	}
	return out, nuls, nil
}

// SniffCompression returns the content coding whose stream raw starts with —
// "gzip" (1F 8B), "deflate" (a zlib stream, which is what HTTP's deflate
// coding carries), "zstd" (a frame or a skippable frame), "xz" or "bzip2" — or
// "" for none. It never decompresses. The caller compares the result with
// Content-Encoding: an undeclared compressed body hides its text from the
// scanner while the recipient can inflate it.
//
// A zlib header is two bytes with a checksum (RFC 1950), and six of the 32
// valid ones are printable ("x^", "hC", "HK", …), so a body whose header
// matches counts as zlib only when it is not plain text as well (see
// textLike). Deflate data is full of control and invalid UTF-8 bytes; only a
// stream crafted to be printable (as in the "Rosetta Flash" attack) passes,
// and no compressor emits one. Brotli and raw deflate have no magic number and
// cannot be sniffed.
func SniffCompression(raw []byte) string {
	switch {
	case len(raw) >= 2 && raw[0] == 0x1F && raw[1] == 0x8B:
		return "gzip"
	case len(raw) >= 4 && raw[0] == 0x28 && raw[1] == 0xB5 && raw[2] == 0x2F && raw[3] == 0xFD,
		len(raw) >= 4 && raw[0]&0xF0 == 0x50 && raw[1] == 0x2A && raw[2] == 0x4D && raw[3] == 0x18:
		return "zstd"
	case len(raw) >= 6 && string(raw[:6]) == "\xFD7zXZ\x00":
		return "xz"
	case len(raw) >= 10 && string(raw[:3]) == "BZh" && '1' <= raw[3] && raw[3] <= '9' &&
		(string(raw[4:10]) == "1AY&SY" || string(raw[4:10]) == "\x17\x72\x45\x38\x50\x90"):
		return "bzip2"
	case zlibHeader(raw) && !textLike(raw):
		return "deflate"
	}
	return ""
}

// zlibHeader reports whether raw starts with an RFC 1950 header: method 8
// (deflate), a window of at most 32 KiB, a valid check, no preset dictionary.
func zlibHeader(raw []byte) bool {
	if len(raw) < 2 {
		return false
	}
	cmf, flg := raw[0], raw[1]
	return cmf&0x0F == 8 && cmf>>4 <= 7 && (uint16(cmf)<<8|uint16(flg))%31 == 0 && flg&0x20 == 0
}

// textLike reports whether b is valid UTF-8 with no control byte other than
// whitespace.
func textLike(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 && (c < '\t' || c > '\r')) || c == 0x7F {
			return false
		}
	}
	return utf8.Valid(b)
}
