package egress

import (
	"math"
)

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }

func upperDigit(c byte) bool { return isUpper(c) || isDigit(c) }
func urlSafe(c byte) bool    { return isAlnum(c) || c == '-' || c == '_' }
func wordChar(c byte) bool   { return isAlnum(c) || c == '_' }

// mixed reports a value with both letters and digits: generated keys have
// them, hyphenated words do not.
func mixed(v []byte) bool {
	var l, d bool
	for _, c := range v {
		l = l || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		d = d || isDigit(c)
	}
	return l && d
}

func keyChar(c byte) bool { return wordChar(c) || c == '-' || c == '.' }

// assignedValue parses `["']? \s* [:=] \s* ["']? value` after a key ending at
// i and returns the value's bounds.
func assignedValue(b []byte, i int) (int, int, bool) {
	lim := min(i+8, len(b))
	for i < lim && (b[i] == '"' || b[i] == '\'' || b[i] == ' ' || b[i] == '\t') {
		i++
	}
	if i >= len(b) || b[i] != ':' && b[i] != '=' {
		return 0, 0, false
	}
	i++
	lim = min(i+8, len(b))
	for i < lim && (b[i] == '"' || b[i] == '\'' || b[i] == ' ' || b[i] == '\t') {
		i++
	}
	vs := i
	for i < len(b) && i-vs <= 200 && secretChar(b[i]) {
		i++
	}
	if i-vs > 200 {
		return 0, i, false
	}
	return vs, i, i > vs
}

func secretChar(c byte) bool {
	return isAlnum(c) || c == '-' || c == '_' || c == '+' || c == '/' || c == '=' || c == '.'
}

func b64Std(v []byte) bool {
	for _, c := range v {
		if !isAlnum(c) && c != '+' && c != '/' {
			return false
		}
	}
	return true
}

func allHex(v []byte) bool {
	for _, c := range v {
		if !isHex(c) {
			return false
		}
	}
	return true
}

// entropy is the Shannon entropy of v in bits per byte.
func entropy(v []byte) float64 {
	var n [256]int
	for _, c := range v {
		n[c]++
	}
	var h float64
	for _, k := range n {
		if k > 0 {
			p := float64(k) / float64(len(v))
			h -= p * math.Log2(p)
		}
	}
	return h
}
