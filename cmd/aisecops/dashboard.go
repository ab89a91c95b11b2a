package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi/dashboard"
	"github.com/aisecops/aisecops-envoy/extauthz/suite"
	"github.com/aisecops/aisecops-envoy/policies"
)

// newDashboard wires the governance dashboard to the authz side: the audit
// log it indexes (tailed every two seconds), the approvals, the directory,
// and the evidence the maturity evaluation gathers. It adds browser
// sessions to auth.
func newDashboard(ctx context.Context, o *options, a *authz, auth *httpapi.Auth, log *slog.Logger, start func(string, func() error)) (*dashboard.Dashboard, error) {
	sessions := dashboard.NewSessions(dashboard.SessionOptions{})
	auth.Sessions = sessions
	index := dashboard.NewIndex(o.auditPath(), dashboard.IndexOptions{})
	start("dashboard-index", func() error {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			if err := index.Refresh(); err != nil {
				log.Warn("dashboard: audit log unreadable", "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	keyPath := filepath.Join(o.home, "declaration-signing-key.pem")
	key, err := dashboard.LoadOrCreateDeclarationKey(keyPath)
	if err != nil {
		return nil, err
	}
	log.Info("dashboard: declarations signed with", "public_key", dashboard.PublicKeyPath(keyPath))
	threats := &threatSuite{o: o, a: a}
	return dashboard.New(dashboard.Config{
		Auth: auth, Sessions: sessions, Index: index, Approvals: a.store, DeclarationKey: key, Logger: log,
		Versions: func() (string, string) { return a.engine.Version(), a.dir.Version() },
		PolicyFiles: func() (map[string]string, error) {
			if o.policies != "" {
				return dashboard.ReadPolicyFiles(os.DirFS(o.policies))
			}
			return dashboard.ReadPolicyFiles(policies.FS())
		},
		Thresholds: func(agent string) (float64, float64, bool) {
			ag, ok := a.dir.Agent(agent)
			return ag.Thresholds.Approval, ag.Thresholds.Halt, ok
		},
		Evidence: dashboard.Evidence{
			VerifyAudit: func() (int, error) {
				res, err := audit.VerifyFile(o.auditPath())
				return res.Lines, err
			},
			ThreatSuite: threats.run,
			Agents: func() []dashboard.AgentFacts {
				var out []dashboard.AgentFacts
				for _, ag := range a.dir.Agents() {
					out = append(out, dashboard.AgentFacts{ID: ag.ID, AllowedTools: len(ag.AllowedTools), Approval: ag.Thresholds.Approval, Halt: ag.Thresholds.Halt})
				}
				return out
			},
			MaxTokenTTL:     o.maxTokenTTL,
			ContextFirewall: a.inspector != nil,
		},
	})
}

// threatSuite runs the shipped threat-regression suite (what `aisecops test`
// runs) against the active bundle and routes, once per pair of versions.
type threatSuite struct {
	o   *options
	a   *authz
	mu  sync.Mutex
	key string
	res dashboard.SuiteFacts
	err error
}

func (t *threatSuite) run(ctx context.Context) (dashboard.SuiteFacts, error) {
	key := t.a.engine.Version() + "/" + t.a.dir.Version()
	t.mu.Lock()
	defer t.mu.Unlock()
	if key == t.key {
		return t.res, t.err
	}
	t.key = key
	t.res, t.err = runThreats(ctx, t.o)
	return t.res, t.err
}

func runThreats(ctx context.Context, o *options) (dashboard.SuiteFacts, error) {
	routes, name, err := loadRoutes(o.config)
	if err != nil {
		return dashboard.SuiteFacts{}, err
	}
	s, err := suite.Threats()
	if err != nil {
		return dashboard.SuiteFacts{}, err
	}
	h, err := suite.New(ctx, o.policies)
	if err != nil {
		return dashboard.SuiteFacts{}, err
	}
	rep, err := suite.Run(ctx, h, routes, name, []*suite.Suite{s})
	if err != nil {
		return dashboard.SuiteFacts{}, err
	}
	f := dashboard.SuiteFacts{Passed: rep.Passed, Failed: rep.Failed, Classes: len(rep.Classes), PolicyVersion: rep.PolicyVersion}
	for _, c := range rep.Classes {
		if c.Stopped {
			f.ClassesStopped++
		}
	}
	return f, nil
}
