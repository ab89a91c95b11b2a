package extauthz

import (
	"context"
	"strings"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// parse: CheckRequest → Plan, on the route the routes file gives the request
// (explain ignores the caller's context extensions altogether).
func parse(req *envoy_service_auth_v3.CheckRequest, opts plan.Options, dir *directory, explain bool) (*plan.Plan, *reason.Error) {
	p, err := plan.Parse(req, opts, dir.resolver(explain))
	return p, asReason(err, reason.BadRequest)
}

// Principal is who makes the call and what the call is bound to: the agent a
// verified capability token names (never anything else the agent wrote), its
// configuration, and the run the call belongs to.
type Principal struct {
	Agent  config.Agent
	Claims *capability.Claims
	// Run is the run of the call: the token's run when it is bound to one,
	// else the run the agent named, else the agent's default run. Runs belong
	// to the agent that opened them.
	Run riskstore.RunRef
	// Binding is the digest of agent, tool, run and the exact request: what an
	// approval binds to.
	Binding string
	// IdemKey is the request id bound to Binding ("" when Envoy sent no id): a
	// retry of the same call is answered as before, but a request id reused for
	// another call is a new call, never a free pass.
	IdemKey string
	// Grant is what the routes file grants the agent on the route's tool.
	Grant config.Grant
}

// DefaultRunPrefix starts the run id of calls that name no run: such calls
// share one run per agent, so their risk and budgets still accumulate.
const DefaultRunPrefix = "agent:"

// authenticate: Plan → Principal. A verified capability token is required on
// every route, model calls included; identity never comes from the plan or a
// header. The Principal is returned as soon as the token is verified, so that
// a later denial is still audited under the agent.
func authenticate(ctx context.Context, p *plan.Plan, v TokenVerifier, revs Revocations, dir *directory, now time.Time) (*Principal, *reason.Error) {
	if p.Token == "" {
		return nil, reason.New(reason.TokenMissing, "a capability token is required for every call")
	}
	claims, err := v.Verify(ctx, p.Token, now)
	if err != nil {
		return nil, asReason(err, reason.TokenMalformed)
	}
	who := &Principal{Claims: claims, Agent: config.Agent{ID: claims.AgentID}}
	if err := v.CheckRoute(claims, p.Route.Tool); err != nil {
		return who, asReason(err, reason.TokenToolMismatch)
	}
	if revs != nil {
		if err := revs.Check(claims); err != nil {
			return who, asReason(err, reason.TokenRevoked)
		}
	}
	if p.AgentID != "" && p.AgentID != claims.AgentID {
		return who, reason.New(reason.AgentMismatch, "the plan names another agent than the token")
	}
	a, ok := dir.agent(claims.AgentID)
	if !ok {
		return who, reason.New(reason.AgentUnknown, "the agent is not configured")
	}
	who.Agent, who.Grant = a, a.Grants[p.Route.Tool]
	run := p.RunID
	if claims.RunID != "" {
		if run != "" && run != claims.RunID {
			return who, reason.New(reason.RunMismatch, "the token is bound to another run")
		}
		run = claims.RunID
	}
	switch {
	case run == "":
		run = DefaultRunPrefix + a.ID
	case strings.HasPrefix(run, DefaultRunPrefix) && run != DefaultRunPrefix+a.ID:
		return who, reason.New(reason.RunNotOwned, "the run belongs to another agent")
	}
	who.Run = riskstore.RunRef{Agent: a.ID, ID: run}
	who.Binding = plan.Hash([]byte(a.ID), []byte(p.Route.Tool), []byte(run), []byte(p.CallDigest()))
	if p.RequestID != "" {
		who.IdemKey = p.RequestID + "/" + who.Binding[:32]
	}
	return who, nil
}
