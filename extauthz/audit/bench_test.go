package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/finding"
)

// benchRecord is a Check record of typical size (about 900 bytes as JSON).
func benchRecord() *Record {
	return &Record{
		TS: time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC), DecisionID: "01JNM3Q5W3X8Z9K7B2C4D6F8G0", RequestID: "5f0c4e2a-8d1b-4c7e-9a3f-2b6d8e0f1a3c",
		RunID: "run-7f3a", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", AgentID: "demo-agent", Tool: "db.read", ToolClass: "read",
		ArgumentsHash: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", RequestDigest: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
		PromptHash:        "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
		ContextProvenance: []Provenance{{SourceType: "user", SourceName: "chat", TrustLevel: "trusted"}, {SourceType: "tool", SourceName: "web.fetch", TrustLevel: "untrusted", SourceHash: "sha256:abcd"}},
		Decision:          "allow", HTTPStatus: 200, Reasons: []Reason{{Code: "allowed", Message: "policy allowed the call", ControlID: "AIS-CTX-01"}},
		ControlIDs: []string{"AIS-CTX-01", "AIS-RSK-01"}, StepRisk: StepRisk{RStep: 0.2, E: 1, T: 1, B: 0.2, Step: 0.2}, CumulativeRisk: 0.6,
		BudgetConsumption: map[string]float64{"max_tool_calls": 0.06, "max_cost": 0.03}, EgressFindings: []finding.Finding{},
		TokenJTI: "jti-3c9d", PolicyVersion: "sha256:policy", RouteVersion: "sha256:routes", Committed: true, LatencyUS: 412,
	}
}

// mutexLog is the writer this package had before group commit, kept here to
// compare against: one encode, one write (and fsync) and one SHA-256 per
// line, all under one mutex.
type mutexLog struct {
	mu    sync.Mutex
	f     *os.File
	size  int64
	prev  string
	fsync bool
	buf   bytes.Buffer
}

func (l *mutexLog) Write(r *Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.PrevHash = l.prev
	l.buf.Reset()
	enc := json.NewEncoder(&l.buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return err
	}
	line := l.buf.Bytes()
	n, err := l.f.WriteAt(line, l.size)
	if err == nil && l.fsync {
		err = l.f.Sync()
	}
	if err != nil {
		return err
	}
	l.size += int64(n)
	sum := sha256.Sum256(line[:len(line)-1])
	l.prev = hex.EncodeToString(sum[:])
	return nil
}

// BenchmarkWriteParallel: lines per second with 1, 8 and 32 concurrent
// writers, with and without fsync, for the group-committed Log and for the
// old single-mutex writer.
func BenchmarkWriteParallel(b *testing.B) {
	for _, impl := range []string{"group", "mutex-old"} {
		for _, fsync := range []bool{false, true} {
			for _, writers := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("%s/fsync=%v/writers=%d", impl, fsync, writers), func(b *testing.B) {
					path := filepath.Join(b.TempDir(), "audit.jsonl")
					var sink Sink
					var closeSink func() error
					var batches atomic.Int64
					if impl == "group" {
						count := &testHooks{wrap: func(name string, f file) file {
							if name != path {
								return f
							}
							return &faultFile{file: f, name: name, onWrite: func(string, []byte, int64) (bool, int, error) { batches.Add(1); return false, 0, nil }}
						}}
						l, err := Open(path, Options{Fsync: fsync, hooks: count})
						if err != nil {
							b.Fatal(err)
						}
						sink, closeSink = l, l.Close
					} else {
						f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
						if err != nil {
							b.Fatal(err)
						}
						sink, closeSink = &mutexLog{f: f, fsync: fsync}, f.Close
					}
					b.ReportAllocs()
					b.ResetTimer()
					var next atomic.Int64
					var wg sync.WaitGroup
					for range writers {
						wg.Go(func() {
							r := benchRecord()
							for next.Add(1) <= int64(b.N) {
								if err := sink.Write(r); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
					b.StopTimer()
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
					if n := batches.Load(); n > 0 {
						b.ReportMetric(float64(b.N)/float64(n), "lines/batch")
					}
					if err := closeSink(); err != nil {
						b.Fatal(err)
					}
				})
			}
		}
	}
}

// BenchmarkVerify: lines per second through the verifier (and so through
// Open's check of an unsealed tail).
func BenchmarkVerify(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for range 10000 / 32 {
				l.Write(benchRecord())
			}
		})
	}
	wg.Wait()
	l.Close()
	data, sidecar, keys := readFile(b, path), readFile(b, path+SidecarSuffix), keysOf(b, path)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var lines int
	for b.Loop() {
		res, err := Verify(bytes.NewReader(data), sidecar, VerifyOptions{Keys: keys})
		if err != nil {
			b.Fatal(err)
		}
		lines = res.Files[0].TotalLines
	}
	b.ReportMetric(float64(lines)*float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}
