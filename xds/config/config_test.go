package config

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestParseDirectoryIsParseForToolsAndAgents: the directory part of a file
// decodes to the same tools and agents as the whole file, with the same
// defaults, and is refused for the same reasons, all reported at once.
func TestParseDirectoryIsParseForToolsAndAgents(t *testing.T) {
	t.Parallel()
	f, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(map[string]any{"tools": f.Tools, "agents": f.Agents})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseDirectory("d", js)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&File{Tools: f.Tools, Agents: f.Agents}, got); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}

	tests := map[string]struct {
		in   string
		want []string
	}{
		"listener does not travel": {`{"listener":{"port":1}}`, []string{"listener"}},
		"unknown tool field":       {`{"tools":[{"name":"t","colour":"red"}]}`, []string{"colour"}},
		"every problem at once": {`{"tools":[{"name":"t","class":"admin","trust":"neutral","match":{"host":"h","path_prefix":"/"},` +
			`"upstream":{"address":"a","port":1},"destination_args":["to"]}],"agents":[{"id":"a","allowed_tools":["u"]}]}`,
			[]string{"tools[0].class", "tools[0].destinations", `agents[0].allowed_tools[0]: names unknown tool "u"`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseDirectory("d", []byte(tc.in))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	withDefaults, err := ParseDirectory("d", []byte(`{"tools":[{"name":"t","class":"read","trust":"neutral",`+
		`"match":{"host":"h","path_prefix":"/"},"upstream":{"address":"a","port":1,"tls":true}}],"agents":[{"id":"a"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if withDefaults.Tools[0].Upstream.SNI != "a" || withDefaults.Agents[0].Thresholds != (Thresholds{DefaultApproval, DefaultHalt}) {
		t.Fatalf("defaults not applied: %+v", withDefaults)
	}
}

// TestAuthzTLSValidated: authz.tls names all three files, as absolute paths,
// and every missing one is reported at once.
func TestAuthzTLSValidated(t *testing.T) {
	t.Parallel()
	base := strings.Replace(string(Example()), "  max_request_bytes: 1048576\n", "  max_request_bytes: 1048576\n  tls: %s\n", 1)
	tests := map[string]struct {
		tls  string
		want []string
	}{
		"complete":      {`{ca_file: /c/ca.crt, cert_file: /c/envoy.crt, key_file: /c/envoy.key, sni: authz}`, nil},
		"empty":         {`{}`, []string{"authz.tls.ca_file: is required", "authz.tls.cert_file: is required", "authz.tls.key_file: is required"}},
		"relative path": {`{ca_file: ca.crt, cert_file: /c/envoy.crt, key_file: /c/envoy.key}`, []string{"authz.tls.ca_file: must be an absolute path"}},
		"unknown field": {`{ca_file: /c/ca.crt, cert_file: /c/e.crt, key_file: /c/e.key, verify: false}`, []string{"verify"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := Parse("routes.yaml", []byte(strings.Replace(base, "%s", tc.tls, 1)))
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if f.Authz.TLS == nil || f.Authz.TLS.SNI != "authz" {
					t.Fatalf("tls %+v", f.Authz.TLS)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
