package riskstore

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runReply is a run script's answer, decoded (see runReplyLib for the layout).
type runReply struct {
	outcome Outcome // 0 for a Load or a prediction
	// predicted is set when a Cluster commit script changed nothing because it
	// needs the run id's owner checked first: the outcome it would have had.
	predicted Outcome
	limit     string
	state     State
	prior     *Prior
}

// result is the CommitResult of a reply that is not a prediction.
func (rr runReply) result() (CommitResult, error) {
	if rr.outcome == 0 || rr.predicted != 0 {
		return CommitResult{}, errors.New("riskstore: commit: the script did not decide")
	}
	out := CommitResult{Outcome: rr.outcome, Limit: rr.limit, State: rr.state}
	if rr.outcome == Duplicate {
		out.Prior = rr.prior
	}
	return out, nil
}

const runReplyLen = 13

// outcomeNames maps the scripts' outcomes; a leading '?' marks a prediction.
var outcomeNames = map[string]Outcome{"ok": Committed, "dup": Duplicate, "refused": Refused, "stale": Stale, "replayed": Replayed}

// limitNames maps the script's limit codes to Budget names, in Exceeds order.
var limitNames = [...]string{"", BudgetToolCalls, BudgetWriteOps, BudgetCost, BudgetExecutionTime, BudgetRisk,
	BudgetAgentToolCalls, BudgetAgentCost, RunOwned}

var errBadReply = errors.New("riskstore: malformed script reply")

func decodeReply(ref RunRef, res []any) (runReply, error) {
	if len(res) != runReplyLen {
		return runReply{}, fmt.Errorf("%w: %d elements", errBadReply, len(res))
	}
	str := func(i int) string {
		switch v := res[i].(type) {
		case string:
			return v
		case int64: // the scripts reply with whole numbers as integers
			return strconv.FormatInt(v, 10)
		}
		return ""
	}
	var out runReply
	switch o := str(0); {
	case o == "":
	case strings.HasPrefix(o, "?"):
		if out.predicted = outcomeNames[o[1:]]; out.predicted == 0 {
			return runReply{}, fmt.Errorf("%w: outcome %q", errBadReply, o)
		}
	default:
		if out.outcome = outcomeNames[o]; out.outcome == 0 {
			return runReply{}, fmt.Errorf("%w: outcome %q", errBadReply, o)
		}
	}
	code, err := strconv.Atoi(str(1))
	if err != nil || code < 0 || code >= len(limitNames) {
		return runReply{}, fmt.Errorf("%w: limit code %q", errBadReply, str(1))
	}
	out.limit = limitNames[code]
	st := &out.state
	st.Run = ref
	ints := [...]*int64{&st.ToolCalls, &st.WriteOps, &st.CostMicros}
	for i, p := range ints {
		if *p, err = strconv.ParseInt(str(2+i), 10, 64); err != nil {
			return runReply{}, fmt.Errorf("%w: counter %q", errBadReply, str(2+i))
		}
	}
	// Every commit, and nothing else, adds one to the tool calls: they are the
	// version (see commitScript).
	st.Version = st.ToolCalls
	if st.RiskTotal, err = strconv.ParseFloat(str(5), 64); err != nil {
		return runReply{}, fmt.Errorf("%w: risk total %q", errBadReply, str(5))
	}
	if st.StartedAt, err = decodeMicros(str(6)); err != nil {
		return runReply{}, err
	}
	if facts := str(7); facts != "" {
		// Joined by newlines in the order they came (see runLib).
		st.Facts = strings.Split(facts, "\n")
		slices.Sort(st.Facts)
		for i, f := range st.Facts {
			if f == "" || (i > 0 && f == st.Facts[i-1]) {
				return runReply{}, fmt.Errorf("%w: facts", errBadReply)
			}
		}
	}
	if s := str(8); s != "" {
		p, err := decodePrior(s)
		if err != nil {
			return runReply{}, err
		}
		out.prior = &p
	}
	if st.Now, err = decodeMicros(str(9)); err != nil || st.Now.IsZero() {
		return runReply{}, fmt.Errorf("%w: time %q", errBadReply, str(9))
	}
	if st.Agent.ToolCalls, err = strconv.ParseInt(str(10), 10, 64); err != nil {
		return runReply{}, fmt.Errorf("%w: agent calls %q", errBadReply, str(10))
	}
	if st.Agent.CostMicros, err = strconv.ParseInt(str(11), 10, 64); err != nil {
		return runReply{}, fmt.Errorf("%w: agent cost %q", errBadReply, str(11))
	}
	if st.Agent.WindowStart, err = decodeMicros(str(12)); err != nil {
		return runReply{}, err
	}
	return out, nil
}

// decodeMicros reads microseconds since the Unix epoch; "" is the zero time.
func decodeMicros(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	us, err := strconv.ParseInt(s, 10, 64)
	if err != nil || us <= 0 {
		return time.Time{}, fmt.Errorf("%w: time %q", errBadReply, s)
	}
	return time.UnixMicro(us).UTC(), nil
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
