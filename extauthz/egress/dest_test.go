package egress

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sendEmail(args string) Request {
	return Request{Method: "POST", Path: "/send", Authority: "mail.example.com", RouteHost: "mail.example.com", ToolClass: "external_send",
		ContentType: "application/json", Body: []byte(`{"agent_id":"demo-agent","tool":"send_email","arguments":` + args + `}`), Arguments: []byte(args)}
}

var emailPolicy = Policy{DestinationArgs: []string{"to", "cc", "bcc"}, Destinations: []string{"example.com"}}

func hostReq(host string) Request {
	return Request{Method: "GET", Path: "/", Authority: host, RouteHost: "api.tool.example", ToolClass: "read"}
}

// Cases named "spec 3.x" are the attack scenarios of the AISecOps
// specification's threat taxonomy (v1.0, section 3).
func destinationCases() map[string]tcase {
	slack := Policy{DestinationArgs: []string{"channel"}, Destinations: []string{"#contracts-internal"}}
	contract := "CONFIDENTIAL\nMaster Services Agreement between Acme Corp and Globex (the Parties).\n" +
		"4. Payment Terms: net 30, USD 1,250,000 per annum.\n7. Termination: either party may terminate on 90 days notice.\n" +
		"9. Indemnification: Supplier shall indemnify Customer.\n11. Limitation of Liability: capped at fees paid.\n14. Governing Law: New York."
	slackPost := func(channel string, maxBody int) tcase {
		args := string(jsonBody(map[string]any{"channel": channel, "text": contract}))
		pol := slack
		pol.MaxBodyBytes = map[string]int{"external_send": maxBody}
		return tcase{req: Request{Method: "POST", Path: "/api/chat.postMessage", Authority: "slack.com", RouteHost: "slack.com", ToolClass: "external_send",
			ContentType: "application/json", Body: []byte(args), Arguments: []byte(args)}, pol: pol}
	}
	c35 := slackPost("#partners-external", 256)
	c35.want = []string{"destination/destination_arg", "sensitive/classification_marker", "sensitive/contract_terms", "size/payload_size"}
	c35ok := slackPost("#contracts-internal", 64<<10)
	c35ok.want = []string{"sensitive/classification_marker", "sensitive/contract_terms"}

	mcp := func(args map[string]any, allowed ...string) tcase {
		b := jsonBody(mcpCall(7, args))
		a := jsonBody(args)
		return tcase{req: Request{Method: "POST", Path: "/mcp", Authority: "mcp.internal", RouteHost: "mcp.internal", ToolClass: "read",
			ContentType: "application/json", Body: b, Arguments: a}, pol: Policy{AllowedHosts: allowed}}
	}
	c33 := mcp(map[string]any{"url": "https://api.vendor-payments.io/v2/charge", "note": "from memory: Acme's billing endpoint"})
	c33.want = []string{"destination/url_host_not_allowed"}
	c33ok := mcp(map[string]any{"url": "https://docs.vendor.example/page"}, "*.vendor.example")
	c33ok.want = nil

	cases := map[string]tcase{
		"email to allowed recipient":   {req: sendEmail(`{"to":"bob@example.com","subject":"lunch","body":"Hi Bob"}`), pol: emailPolicy, want: nil},
		"email to allowed subdomain":   {req: sendEmail(`{"to":"Bob <bob@eu.example.com>","cc":["carol@example.com"]}`), pol: emailPolicy, want: nil},
		"case-variant argument name":   {req: sendEmail(`{"To":"attacker@external.com"}`), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}, secrets: []string{"attacker@external.com"}},
		"email to attacker (spec 3.1)": {req: sendEmail(`{"to":"attacker@external.com","body":"the conversation"}`), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}, secrets: []string{"attacker@external.com"}},
		"one bad recipient in a list":  {req: sendEmail(`{"to":"bob@example.com","cc":["eve@evil.com"]}`), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}},
		"comma-separated recipients":   {req: sendEmail(`{"to":"bob@example.com, eve@example.com.evil.com"}`), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}},
		"lookalike domain":             {req: sendEmail(`{"to":"bob@notexample.com"}`), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}},
		"nested recipient object":      {req: sendEmail(`{"message":{"bcc":[{"name":"Eve","email":"eve@evil.com"}]}}`), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}},
		"other email in body text":     {req: sendEmail(`{"to":"bob@example.com","body":"ask dave@partner.org"}`), pol: emailPolicy, want: []string{"pii/email"}},
		"no arguments: read from body": {req: func() Request { r := sendEmail(`{"to":"eve@evil.com"}`); r.Arguments = nil; return r }(), pol: emailPolicy, want: []string{"destination/destination_arg", "pii/email"}},
		"url destination arg": {req: Request{Authority: "hook.example.com", RouteHost: "hook.example.com", ToolClass: "external_send", Arguments: []byte(`{"url":"http://0x7f.1/admin"}`)},
			pol: Policy{DestinationArgs: []string{"url"}, Destinations: []string{"example.com"}}, want: []string{"destination/destination_arg", "destination/internal_address", "destination/ip_literal"}},

		"spec 3.5 contract to external channel": c35,
		"spec 3.5 contract to allowed channel":  c35ok,
		"spec 3.3 poisoned endpoint":            c33,
		"spec 3.3 allowed host":                 c33ok,

		"host agrees":               {req: hostReq("api.tool.example:443"), want: nil},
		"host elsewhere":            {req: hostReq("evil.example"), want: []string{"destination/host_not_allowed"}},
		"host vs authority":         {req: Request{Host: "evil.example", Authority: "api.tool.example", RouteHost: "api.tool.example", ToolClass: "read"}, want: []string{"destination/host_authority_mismatch", "destination/host_not_allowed"}},
		"x-forwarded-host":          {req: Request{Authority: "api.tool.example", RouteHost: "api.tool.example", ToolClass: "read", Headers: map[string]string{"x-forwarded-host": "evil.example"}}, want: []string{"destination/host_not_allowed"}},
		"url in path":               {req: Request{Path: "/proxy/https://evil.example/x", Authority: "api.tool.example", RouteHost: "api.tool.example", ToolClass: "read"}, want: []string{"destination/url_host_not_allowed"}},
		"url in query percent":      {req: Request{Path: "/fetch", RawQuery: "u=https%3A%2F%2F169.254.169.254%2Flatest", Authority: "api.tool.example", RouteHost: "api.tool.example", ToolClass: "read"}, want: []string{"destination/internal_address", "destination/ip_literal"}},
		"url with userinfo":         {req: Request{Body: []byte(`{"u":"https://api.tool.example@evil.example/"}`), Authority: "api.tool.example", RouteHost: "api.tool.example"}, want: []string{"destination/url_host_not_allowed", "pii/email"}},
		"url to route host is fine": {req: Request{Body: []byte(`{"u":"https://api.tool.example/v1/x"}`), Authority: "api.tool.example", RouteHost: "api.tool.example"}, want: nil},
		"escaped url":               {req: Request{Body: []byte(`{"u":"https:\/\/evil.example\/x"}`), Authority: "api.tool.example", RouteHost: "api.tool.example"}, want: []string{"destination/url_host_not_allowed"}},
		"localhost":                 {req: hostReq("localhost:8080"), want: []string{"destination/host_not_allowed", "destination/internal_host"}},
		"metadata name":             {req: hostReq("metadata.google.internal"), want: []string{"destination/host_not_allowed", "destination/internal_host"}},
		"route configured on an ip": {req: Request{Authority: "10.0.0.5:8443", RouteHost: "10.0.0.5", ToolClass: "read"}, want: nil},
	}
	for _, h := range []string{"2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::1]",
		"169.254.169.254", "[fd00:ec2::254]", "0xa9.0xfe.0xa9.0xfe", "2852039166", "[64:ff9b::a9fe:a9fe]", "10.1.2.3.", "0"} {
		cases["ip literal "+h] = tcase{req: hostReq(h), want: []string{"destination/internal_address", "destination/ip_literal"}}
		cases["ip literal in url "+h] = tcase{req: Request{Authority: "api.tool.example", RouteHost: "api.tool.example", Body: []byte(`{"callback":"http://` + h + `/x"}`)},
			want: []string{"destination/internal_address", "destination/ip_literal"}}
	}
	for _, h := range []string{"8.8.8.8", "[2001:4860:4860::8888]", "134744072", "017.0.0.1", "08.8.8.8", "0x1ffffffffff"} {
		cases["public ip literal "+h] = tcase{req: hostReq(h), want: []string{"destination/ip_literal"}}
	}
	return cases
}

func TestDestinations(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	for name, tc := range destinationCases() {
		t.Run(name, func(t *testing.T) { run(t, in, name, tc) })
	}
}

func TestParseIP(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"2130706433": "127.0.0.1", "0x7f.1": "127.0.0.1", "0x7f000001": "127.0.0.1", "017.0.0.1": "15.0.0.1",
		"0177.0.0.1": "127.0.0.1", "127.1": "127.0.0.1", "127.0.1": "127.0.0.1", "[::ffff:127.0.0.1]": "::ffff:127.0.0.1",
		"169.254.169.254": "169.254.169.254", "0xa9fea9fe": "169.254.169.254", "[fe80::1%eth0]": "fe80::1",
		"example.com": "", "1password.com": "", "256.1.1.1": "", "1.2.3.4.5": "",
	}
	for in, want := range cases {
		a, ok := parseIP(in)
		got := ""
		if ok {
			got = a.String()
		}
		if got != want {
			t.Errorf("parseIP(%q) = %q, want %q", in, got, want)
		}
	}
	for a, want := range map[string]bool{"::ffff:127.0.0.1": true, "169.254.169.254": true, "fd00:ec2::254": true, "100.64.1.1": true, "8.8.8.8": false, "2001:db8::1": false} {
		if got := internalAddr(netip.MustParseAddr(a)); got != want {
			t.Errorf("internalAddr(%s) = %v, want %v", a, got, want)
		}
	}
}

func TestDestinationFindingLocation(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	req := sendEmail(`{"to":"attacker@external.com"}`)
	r, err := in.Inspect(&req, &emailPolicy)
	if err != nil {
		t.Fatal(err)
	}
	h := in.hash([]byte("attacker@external.com"))
	want := []Finding{
		{Detector: "destination_arg", Location: "arguments", Class: ClassDestination, Count: 1, Hash: h},
		{Detector: "email", Location: "body", Class: ClassPII, Count: 1, Hash: h},
	}
	if diff := cmp.Diff(want, r.Findings); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

type recipientCase struct {
	to      any // the "to" argument: a string, or arrays and objects of them
	allowed bool
}

// recipientCases: a recipient value is allowed only when every address any
// reasonable mail stack might deliver to is under example.com.
func recipientCases() map[string]recipientCase {
	return map[string]recipientCase{
		"plain":                         {"bob@example.com", true},
		"display name":                  {"Bob <bob@example.com>", true},
		"unicode display name":          {"Jürgen <j@example.com>", true},
		"quoted display name with ','":  {`"Smith, Bob" <bob@example.com>`, true},
		"name repeats the address":      {`"bob@example.com" <bob@example.com>`, true},
		"comment with allowed address":  {"Bob (carol@example.com) <bob@example.com>", true},
		"comma list":                    {"bob@example.com, carol@example.com", true},
		"semicolon list":                {"bob@example.com; carol@example.com", true},
		"group":                         {"team: bob@example.com, carol@example.com;", true},
		"group then semicolon":          {"team: bob@example.com; carol@example.com", true},
		"mailto":                        {"mailto:bob@example.com", true},
		"mailto with cc":                {"mailto:bob@example.com?cc=carol@example.com&subject=hi", true},
		"mailto percent-encoded":        {"mailto:bob%40example.com", true},
		"mailto in angle brackets":      {"Bob <mailto:bob@example.com>", true},
		"encoded-word name":             {"=?utf-8?q?Bob_Smith?= <bob@example.com>", true},
		"upper-case domain":             {"BOB@EXAMPLE.COM", true},
		"subdomain":                     {"bob@mail.example.com", true},
		"full-width domain maps":        {"bob@ｅｘａｍｐｌｅ.com", true},
		"array and objects":             {[]any{"bob@example.com", map[string]any{"email": "carol@example.com", "name": "Carol"}}, true},
		"the report":                    {"attacker@evil.test <bob@example.com>", false},
		"angle first, bare address":     {"<bob@example.com> attacker@evil.test", false},
		"comma list, one outside":       {"bob@example.com, eve@evil.test", false},
		"semicolon list, one outside":   {"bob@example.com; eve@evil.test", false},
		"group, one outside":            {"undisclosed: bob@example.com, eve@evil.test;", false},
		"group then outsider":           {"team: bob@example.com; eve@evil.test", false},
		"encoded-word b":                {"=?utf-8?b?ZXZlQGV2aWwudGVzdA==?= <bob@example.com>", false},
		"encoded-word q":                {"=?utf-8?q?eve=40evil.test?= <bob@example.com>", false},
		"encoded-word unknown charset":  {"=?utf-16?b?AGUAdgBl?= <bob@example.com>", false},
		"punycode lookalike":            {"bob@xn--exmple-cua.com", false},
		"unicode lookalike":             {"bob@exämple.com", false},
		"cyrillic lookalike":            {"bob@exаmple.com", false},
		"trailing dot":                  {"bob@example.com.", false},
		"suffix trick":                  {"bob@example.com.evil.test", false},
		"lookalike suffix":              {"bob@notexample.com", false},
		"source route":                  {"<@evil.test:bob@example.com>", false},
		"address in trailing comment":   {"bob@example.com (eve@evil.test)", false},
		"address in name comment":       {"Bob (eve@evil.test) <bob@example.com>", false},
		"address in quoted name":        {`"eve@evil.test" <bob@example.com>`, false},
		"two @":                         {"bob@example.com@evil.test", false},
		"quoted local part with @":      {`"a@evil.test"@example.com`, false},
		"full-width @ outside":          {"eve＠evil.test", false},
		"full-width @ inside":           {"bob＠example.com", false},
		"small commercial at":           {"eve﹫evil.test <bob@example.com>", false},
		"percent-encoded @":             {"eve%40evil.test", false},
		"percent-encoded in local part": {"eve%40evil.test@example.com", false},
		"percent hack":                  {"eve%evil.test@example.com", false},
		"bang path":                     {"evil.test!eve@example.com", false},
		"quoted percent hack":           {`"eve%evil.test"@example.com`, false},
		"quoted bang path":              {`"evil!eve"@example.com`, false},
		"escaped @":                     {`eve\u0040evil.test`, false},
		"mailto cc outside":             {"mailto:bob@example.com?cc=eve@evil.test", false},
		"mailto body address":           {"mailto:bob@example.com?body=eve@evil.test", false},
		"mailto percent outside":        {"mailto:eve%40evil.test", false},
		"header injection":              {"bob@example.com\r\nBcc: eve@evil.test", false},
		"address literal":               {"bob@[127.0.0.1]", false},
		"localhost":                     {"bob@localhost", false},
		"handle, not configured":        {"@alice", false},
		"bare @ in name":                {"Bob @ home <bob@example.com>", false},
		"address then url":              {"bob@example.com, https://evil.test/", false},
		"url with recipient":            {"https://mail.example.com/send?to=eve@evil.test", false},
		"url elsewhere, recipient ok":   {"https://evil.test/send?to=bob@example.com", false},
		"url userinfo elsewhere":        {"https://bob@example.com@evil.test/", false},
		"url to allowed host":           {"https://mail.example.com/send?to=bob@example.com", true},
		"array, one outside":            {[]any{"bob@example.com", "eve@evil.test"}, false},
		"object name is an address":     {[]any{map[string]any{"email": "bob@example.com", "name": "eve@evil.test"}}, false},
		"object name encoded address":   {[]any{map[string]any{"email": "bob@example.com", "name": "=?utf-8?b?ZXZlQGV2aWwudGVzdA==?="}}, false},
	}
}

func recipientRequest(to any) Request {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	_ = e.Encode(map[string]any{"to": to})
	return sendEmail(strings.TrimSpace(b.String()))
}

func destinationFindings(r Result) int {
	n := 0
	for _, f := range r.Findings {
		if f.Class == ClassDestination {
			n++
		}
	}
	return n
}

func TestRecipients(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	for name, tc := range recipientCases() {
		t.Run(name, func(t *testing.T) {
			req := recipientRequest(tc.to)
			r, err := in.Inspect(&req, &emailPolicy)
			if err != nil {
				t.Fatal(err)
			}
			if got := destinationFindings(r) == 0; got != tc.allowed {
				t.Errorf("%q: allowed %v, want %v; findings %+v", tc.to, got, tc.allowed, r.Findings)
			}
			if tc.allowed && len(r.Findings) != 0 {
				t.Errorf("%q: an allowed recipient is reported: %+v", tc.to, r.Findings)
			}
			out, _ := json.Marshal(r)
			for _, leak := range []string{"evil", "bob", "eve", "example"} {
				if bytes.Contains(out, []byte(leak)) {
					t.Errorf("result names %q: %s", leak, out)
				}
			}
		})
	}
}
