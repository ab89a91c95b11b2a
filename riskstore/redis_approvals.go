package riskstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

func (r *Redis) approvalKeys() []string {
	base := r.prefix + ":{approvals}:"
	return []string{base + "body", base + "status", base + "decision", base + "exp", base + "pending"}
}

// approvalDecision is the part of an approval written by DecideApproval.
type approvalDecision struct {
	DecidedAt time.Time `json:"decided_at"`
	DecidedBy string    `json:"decided_by,omitempty"`
	Why       string    `json:"why,omitempty"`
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// CreateApproval implements Approvals.
func (r *Redis) CreateApproval(ctx context.Context, a Approval, ttl time.Duration) error {
	if err := r.durability.refuse(); err != nil {
		return err
	}
	if a.ID == "" {
		return errors.New("riskstore: create approval: empty id")
	}
	if a.Status == "" {
		a.Status = ApprovalPending
	}
	body, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("riskstore: create approval %s: %w", a.ID, err)
	}
	now := r.now()
	lim := r.approvalLimits.withDefaults()
	res, err := approvalCreateScript.Run(ctx, r.c(), r.approvalKeys(),
		a.ID, body, a.Status, ms(now), ms(now.Add(ttl)), max(ttl.Milliseconds(), 1),
		a.AgentID, a.RunID, lim.PerRun, lim.PerAgent).Text()
	if err != nil {
		return fmt.Errorf("riskstore: create approval %s: %w", a.ID, err)
	}
	switch res {
	case "conflict":
		return fmt.Errorf("riskstore: approval %s: %w", a.ID, ErrConflict)
	case "limit":
		return fmt.Errorf("riskstore: approval %s: too many pending approvals for its run or agent: %w", a.ID, ErrLimit)
	}
	return nil
}

// GetApproval implements Approvals.
func (r *Redis) GetApproval(ctx context.Context, id string) (Approval, error) {
	res, err := approvalGetScript.Run(ctx, r.c(), r.approvalKeys(), id, ms(r.now())).StringSlice()
	if errors.Is(err, redis.Nil) {
		return Approval{}, ErrNotFound
	}
	if err != nil {
		return Approval{}, fmt.Errorf("riskstore: get approval %s: %w", id, err)
	}
	if len(res) != 3 {
		return Approval{}, fmt.Errorf("riskstore: get approval %s: unexpected reply", id)
	}
	return decodeApproval(id, res[0], res[1], res[2])
}

// ListApprovals implements Approvals; status "" lists all, newest first.
func (r *Redis) ListApprovals(ctx context.Context, status string) ([]Approval, error) {
	res, err := approvalListScript.Run(ctx, r.c(), r.approvalKeys(), ms(r.now())).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("riskstore: list approvals: %w", err)
	}
	var out []Approval
	for i := 0; i+3 < len(res); i += 4 {
		if status != "" && res[i+2] != status {
			continue
		}
		a, err := decodeApproval(res[i], res[i+1], res[i+2], res[i+3])
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DecideApproval implements Approvals.
func (r *Redis) DecideApproval(ctx context.Context, id string, approve bool, by, why string, now time.Time) (Approval, error) {
	if err := r.durability.refuse(); err != nil {
		return Approval{}, err
	}
	status := ApprovalRejected
	if approve {
		status = ApprovalApproved
	}
	dec, err := json.Marshal(approvalDecision{DecidedAt: now, DecidedBy: by, Why: why})
	if err != nil {
		return Approval{}, fmt.Errorf("riskstore: decide approval %s: %w", id, err)
	}
	res, err := approvalDecideScript.Run(ctx, r.c(), r.approvalKeys(), id, ms(r.now()), status, dec).StringSlice()
	if err != nil {
		return Approval{}, fmt.Errorf("riskstore: decide approval %s: %w", id, err)
	}
	return approvalOutcome(id, res)
}

// ConsumeApproval implements Approvals.
func (r *Redis) ConsumeApproval(ctx context.Context, id, binding string) (Approval, error) {
	if err := r.durability.refuse(); err != nil {
		return Approval{}, err
	}
	res, err := approvalConsumeScript.Run(ctx, r.c(), r.approvalKeys(), id, ms(r.now()), binding).StringSlice()
	if err != nil {
		return Approval{}, fmt.Errorf("riskstore: consume approval %s: %w", id, err)
	}
	return approvalOutcome(id, res)
}

// approvalOutcome turns {verdict, body, status, decision} into the same
// results and errors the in-memory store gives.
func approvalOutcome(id string, res []string) (Approval, error) {
	if len(res) == 1 && res[0] == "notfound" {
		return Approval{}, ErrNotFound
	}
	if len(res) != 4 {
		return Approval{}, fmt.Errorf("riskstore: approval %s: unexpected reply", id)
	}
	a, err := decodeApproval(id, res[1], res[2], res[3])
	if err != nil {
		return Approval{}, err
	}
	switch res[0] {
	case "ok":
		return a, nil
	case "conflict":
		return a, fmt.Errorf("riskstore: approval %s is %s: %w", id, a.Status, ErrConflict)
	}
	return Approval{}, fmt.Errorf("riskstore: approval %s: unexpected verdict %q", id, res[0])
}

func decodeApproval(id, body, status, decision string) (Approval, error) {
	var a Approval
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		return Approval{}, fmt.Errorf("riskstore: approval %s: %w", id, err)
	}
	a.Status = status
	if decision != "" {
		var d approvalDecision
		if err := json.Unmarshal([]byte(decision), &d); err != nil {
			return Approval{}, fmt.Errorf("riskstore: approval %s: %w", id, err)
		}
		a.DecidedAt, a.DecidedBy, a.Why = d.DecidedAt, d.DecidedBy, d.Why
	}
	return a, nil
}

// nonceKey is where a single-use id is recorded, by UseOnce and by a
// commit's Step.Nonce alike.
func (r *Redis) nonceKey(id string) string { return r.prefix + ":jti:" + requestField(id) }

// useOnceScript records KEYS[1] for owner ARGV[1] for ARGV[2] ms and answers
// 1 when this owner holds it (now or from an earlier attempt of the same
// call), 0 when another owner does.
var useOnceScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
`)

// UseOnce implements Nonces with SET NX PX in a script: the first owner wins,
// on any replica, and a client retry of the same owner's write is not a replay.
func (r *Redis) UseOnce(ctx context.Context, id, owner string, ttl time.Duration) (bool, error) {
	if err := r.durability.refuse(); err != nil {
		return false, err
	}
	if ttl <= 0 {
		// Nothing to remember: the in-memory store forgets it at once too.
		return true, nil
	}
	key := r.nonceKey(id)
	first, err := useOnceScript.Run(ctx, r.c(), []string{key}, owner, max(ttl, time.Millisecond).Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("riskstore: use token id once: %w", err)
	}
	return first == 1, nil
}
