package egress

import (
	"bytes"
)

func localChar(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}
func domainChar(c byte) bool { return isAlnum(c) || c == '.' || c == '-' }

// emails finds addresses around each '@'. The search resumes at the end of
// the domain, so a run of '@' or of address characters costs linear time.
func (s *scan) emails(b []byte, loc string, derived bool) {
	for i := 0; i < len(b); {
		k := bytes.IndexByte(b[i:], '@')
		if k < 0 {
			return
		}
		at := i + k
		ls := at
		for ls > 0 && at-ls < 64 && localChar(b[ls-1]) {
			ls--
		}
		de := at + 1
		for de < len(b) && de-at <= 253 && domainChar(b[de]) {
			de++
		}
		i = max(de, at+1)
		for de > at+1 && (b[de-1] == '.' || b[de-1] == '-') {
			de--
		}
		for ls < at && b[ls] == '.' {
			ls++
		}
		if ls == at || de-at > 253 || !validDomain(b[at+1:de]) {
			continue
		}
		s.value("email", ClassPII, loc, lowerASCII(b[ls:de]), derived)
	}
}

// validDomain wants at least two labels and an alphabetic TLD of 2..24.
func validDomain(d []byte) bool {
	dot := bytes.LastIndexByte(d, '.')
	if dot <= 0 {
		return false
	}
	tld := d[dot+1:]
	if len(tld) < 2 || len(tld) > 24 {
		return false
	}
	for _, c := range tld {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// digitRun parses digits with single ' ' or '-' separators starting at i and
// returns the index after the run.
func (s *scan) digitRun(b []byte, i int, loc string, derived bool) int {
	digits := s.digits[:]
	var groups [8]int // digit count per group
	var seps [8]byte
	nd, ng := 0, 0
	j := i
	for {
		g := j
		for j < len(b) && isDigit(b[j]) {
			if nd < len(digits) {
				digits[nd] = b[j]
			}
			nd++
			j++
		}
		if ng < len(groups) {
			groups[ng] = j - g
		}
		ng++
		if j+1 < len(b) && (b[j] == ' ' || b[j] == '-') && isDigit(b[j+1]) {
			if ng-1 < len(seps) {
				seps[ng-1] = b[j]
			}
			j++
			continue
		}
		break
	}
	if j < len(b) && (isAlnum(b[j]) || b[j] == '.' && j+1 < len(b) && isDigit(b[j+1])) {
		return j // part of a word or a decimal number
	}
	// US SSN: AAA-GG-SSSS, no 000/666/9xx area, no 00 group, no 0000 serial.
	if ng == 3 && groups[0] == 3 && groups[1] == 2 && groups[2] == 4 && seps[0] == '-' && seps[1] == '-' {
		d := digits[:9]
		area := string(d[:3])
		if area != "000" && area != "666" && d[0] != '9' && string(d[3:5]) != "00" && string(d[5:9]) != "0000" {
			s.value("us_ssn", ClassPII, loc, d, derived)
		}
		return j
	}
	if ng > len(groups) {
		return j
	}
	// Payment card: 13..19 digits, Luhn-valid, a known issuer prefix. With
	// separators, also the longest group prefix (a card followed by an expiry).
	sepOK := true
	for k := 1; k < ng-1; k++ {
		sepOK = sepOK && seps[k] == seps[0]
	}
	if !sepOK {
		return j
	}
	n := 0
	best := 0
	for k := 0; k < ng; k++ {
		n += groups[k]
		if n > 19 {
			break
		}
		if n >= 13 && (ng == 1 || k > 0) {
			if luhn(digits[:n]) && issuer(digits[:n]) {
				best = n
			}
		}
	}
	if best > 0 {
		s.value("payment_card", ClassPII, loc, digits[:best], derived)
	}
	return j
}

func luhn(d []byte) bool {
	sum := 0
	dbl := false
	for k := len(d) - 1; k >= 0; k-- {
		v := int(d[k] - '0')
		if dbl {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
		dbl = !dbl
	}
	return sum%10 == 0
}

// issuer reports a card-network prefix (Visa, Mastercard, Amex, Discover,
// JCB, Diners, UnionPay, Maestro): a Luhn check alone passes one random
// number in ten.
func issuer(d []byte) bool {
	p2 := int(d[0]-'0')*10 + int(d[1]-'0')
	p4 := p2*100 + int(d[2]-'0')*10 + int(d[3]-'0')
	switch {
	case d[0] == '4':
		return true
	case p2 >= 51 && p2 <= 55, p4 >= 2221 && p4 <= 2720:
		return true
	case p2 == 34 || p2 == 37 || p2 == 35 || p2 == 30 || p2 == 36 || p2 == 38 || p2 == 39:
		return true
	case p2 == 60 || p2 == 62 || p2 == 64 || p2 == 65 || p2 == 50 || p2 == 56 || p2 == 57 || p2 == 58 || p2 == 67 || p2 == 63:
		return true
	}
	return false
}

// ibanLengths is the IBAN length per country (the registry's common entries).
func ibanLengths() map[string]int {
	return map[string]int{
		"AD": 24, "AE": 23, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
		"CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
		"ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
		"GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30,
		"KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22,
		"MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
		"PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
		"TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
	}
}

// iban collects the country's IBAN length of alphanumerics (single spaces
// allowed between them) and checks mod 97.
func (s *scan) iban(b []byte, i int, loc string, derived bool) {
	L, ok := s.in.match.iban[string(b[i:i+2])]
	if !ok {
		return
	}
	v := s.ibanBuf[:]
	n := 0
	j := i
	for j < len(b) && n < L {
		c := b[j]
		switch {
		case isUpper(c) || isDigit(c):
			v[n] = c
			n++
			j++
		case c == ' ' && n > 0 && j+1 < len(b) && (isUpper(b[j+1]) || isDigit(b[j+1])):
			j++
		default:
			return
		}
	}
	if n != L || j < len(b) && isAlnum(b[j]) {
		return
	}
	iban := v[:L]
	// Move the first four characters to the end; letters are 10..35.
	rem := 0
	for k := 0; k < L; k++ {
		c := iban[(k+4)%L]
		if isDigit(c) {
			rem = (rem*10 + int(c-'0')) % 97
		} else {
			rem = (rem*100 + int(c-'A'+10)) % 97
		}
	}
	if rem == 1 {
		s.value("iban", ClassPII, loc, iban, derived)
	}
}

// nino finds a UK National Insurance number: two letters (with HMRC's
// exclusions), six digits, a suffix A-D; compact or in pairs.
func (s *scan) nino(b []byte, i int, loc string, derived bool) {
	v := s.ninoBuf[:]
	n := 0
	j := i
	for j < len(b) && n < 9 {
		c := b[j]
		if c == ' ' && n >= 2 && n%2 == 0 && j+1 < len(b) && isAlnum(b[j+1]) {
			j++
			continue
		}
		want := n < 2 && isUpper(c) || n >= 2 && n < 8 && isDigit(c) || n == 8 && c >= 'A' && c <= 'D'
		if !want {
			return
		}
		v[n] = c
		n++
		j++
	}
	if n != 9 || j < len(b) && isAlnum(b[j]) {
		return
	}
	a, c := v[0], v[1]
	if bytes.IndexByte([]byte("DFIQUV"), a) >= 0 || bytes.IndexByte([]byte("DFIQUVO"), c) >= 0 {
		return
	}
	switch string(v[:2]) {
	case "BG", "GB", "NK", "KN", "TN", "NT", "ZZ":
		return
	}
	s.value("uk_nino", ClassPII, loc, v[:], derived)
}
