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
