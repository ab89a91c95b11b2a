package riskstore

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// The step window is stored as compact strings, not JSON: a Commit returns the
// whole window and decoding 16 JSON objects would cost more CPU than the round
// trip. Layout (strings are length-prefixed, so any byte is safe):
//
//	1|<unix sec>|<nsec>|<risk>|<untrusted 0/1>|<len>:<tool><len>:<class><len>:<trust>
//
// A zero At is stored with empty sec and nsec.

var errBadStep = errors.New("riskstore: malformed step record")

func encodeStep(s StepSummary) string {
	b := make([]byte, 0, 48+len(s.Tool)+len(s.Class)+len(s.Trust))
	b = append(b, "1|"...)
	if !s.At.IsZero() {
		b = strconv.AppendInt(b, s.At.Unix(), 10)
		b = append(b, '|')
		b = strconv.AppendInt(b, int64(s.At.Nanosecond()), 10)
	} else {
		b = append(b, '|')
	}
	b = append(b, '|')
	b = strconv.AppendFloat(b, s.Risk, 'g', -1, 64)
	if s.Untrusted {
		b = append(b, "|1|"...)
	} else {
		b = append(b, "|0|"...)
	}
	for _, f := range [...]string{s.Tool, s.Class, s.Trust} {
		b = strconv.AppendInt(b, int64(len(f)), 10)
		b = append(b, ':')
		b = append(b, f...)
	}
	return string(b)
}

func decodeStep(rec string) (StepSummary, error) {
	var s StepSummary
	rest, ok := strings.CutPrefix(rec, "1|")
	if !ok {
		return s, errBadStep
	}
	var head [4]string
	for i := range head {
		var found bool
		head[i], rest, found = strings.Cut(rest, "|")
		if !found {
			return s, errBadStep
		}
	}
	if head[0] != "" || head[1] != "" {
		sec, err1 := strconv.ParseInt(head[0], 10, 64)
		nsec, err2 := strconv.ParseInt(head[1], 10, 64)
		if err1 != nil || err2 != nil || nsec < 0 || nsec >= 1e9 {
			return s, errBadStep
		}
		s.At = time.Unix(sec, nsec).UTC()
	}
	risk, err := strconv.ParseFloat(head[2], 64)
	if err != nil {
		return s, errBadStep
	}
	s.Risk = risk
	switch head[3] {
	case "0":
	case "1":
		s.Untrusted = true
	default:
		return s, errBadStep
	}
	for _, dst := range [...]*string{&s.Tool, &s.Class, &s.Trust} {
		n, tail, found := strings.Cut(rest, ":")
		if !found {
			return s, errBadStep
		}
		l, err := strconv.Atoi(n)
		if err != nil || l < 0 || l > len(tail) {
			return s, errBadStep
		}
		*dst, rest = tail[:l], tail[l:]
	}
	if rest != "" {
		return s, errBadStep
	}
	return s, nil
}

// A prior is stored as "<risk total>|<step risk>|<decision id>"; the script
// writes the total, Go the rest.
func decodePrior(rec string) (Prior, error) {
	total, rest, ok1 := strings.Cut(rec, "|")
	step, id, ok2 := strings.Cut(rest, "|")
	if !ok1 || !ok2 {
		return Prior{}, errors.New("riskstore: malformed prior record")
	}
	t, err1 := strconv.ParseFloat(total, 64)
	s, err2 := strconv.ParseFloat(step, 64)
	if err1 != nil || err2 != nil {
		return Prior{}, errors.New("riskstore: malformed prior record")
	}
	return Prior{DecisionID: id, StepRisk: s, RiskTotal: t}, nil
}
