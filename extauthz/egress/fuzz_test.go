package egress

import (
	"encoding/json"
	"mime"
	"net/mail"
	"strings"
	"testing"

	"golang.org/x/net/idna"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

func FuzzCanonicalize(f *testing.F) {
	for _, enc := range encodings {
		f.Add([]byte(enc(awsKey + " " + email)))
	}
	f.Add([]byte(`\ud83d\ude00 \ud800 \u12 \x4 %4 %zz \\u0041`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d := percentDecode(b); len(d) > len(b) {
			t.Fatalf("percentDecode grew %d -> %d", len(b), len(d))
		}
		if d := unescape(b); len(d) > len(b) {
			t.Fatalf("unescape grew %d -> %d", len(b), len(d))
		}
		// The chain reaches a fixed point or the depth bound; never loops.
		v := b
		for range 8 {
			n, _ := canonical(v)
			if n == nil {
				break
			}
			v = n
		}
		in := newTestInspector(t, Limits{MaxDecodedBytes: 1 << 20})
		s := newScan(in, &Request{RouteHost: "h"}, &Policy{})
		if err := s.text(b, "f", 0, mDLP|mURL|mInjection, false); err != nil && err != errDepth && err != errBudget {
			t.Fatalf("text: unexpected error %v", err)
		}
	})
}

func FuzzInspect(f *testing.F) {
	for _, tc := range detectorCases() {
		f.Add(string(tc.req.Body), tc.req.Path, tc.req.ContentType, "", uint8(0), []byte(nil))
	}
	for _, tc := range llmCases() {
		f.Add(string(tc.req.Body), tc.req.Path, tc.req.ContentType, "", uint8(4), []byte(nil))
	}
	for _, tc := range destinationCases() {
		f.Add(string(tc.req.Body), tc.req.Path, tc.req.ContentType, tc.req.Authority, uint8(2), tc.req.Arguments)
	}
	for _, tc := range recipientCases() {
		req := recipientRequest(tc.to)
		f.Add(string(req.Body), req.Path, req.ContentType, req.Authority, uint8(2), req.Arguments)
	}
	b, ct := multipartBody(f, [2]string{"a", "x"}, [2]string{"b", awsKey})
	f.Add(string(b), "/", ct, "", uint8(1), []byte(nil))
	f.Add(string(gzipBytes(f, []byte(email))), "/", "application/json", "", uint8(1), []byte(nil))
	classes := []string{"read", "write", "external_send", "exec", "llm"}
	in := newTestInspector(f, Limits{MaxDecompressedBytes: 4 << 20, MaxDecodedBytes: 8 << 20})
	f.Fuzz(func(t *testing.T, body, path, contentType, authority string, sel uint8, args []byte) {
		req := &Request{Method: "POST", Path: path, Body: []byte(body), ContentType: contentType, Authority: authority,
			RouteHost: "mail.example.com", ToolClass: classes[int(sel)%len(classes)], Arguments: args,
			UntrustedContext: sel&8 != 0, Headers: map[string]string{"x-h": path}}
		if sel&16 != 0 {
			req.ContentEncoding = "gzip"
		}
		if sel&32 != 0 {
			req.ContentEncoding = "deflate"
		}
		pol := &Policy{DestinationArgs: []string{"to", "url", "channel"}, Destinations: []string{"example.com", "#general"}}
		r, err := in.Inspect(req, pol)
		if err != nil {
			if reason.CodeOf(err) != reason.EgressBlocked {
				t.Fatalf("error with code %s: %v", reason.CodeOf(err), err)
			}
			return
		}
		if len(r.Findings) > DefaultMaxFindings {
			t.Fatalf("%d findings over the cap", len(r.Findings))
		}
		for _, fd := range r.Findings {
			if fd.Detector == "" || fd.Class == "" || fd.Count < 1 || len(fd.Hash) != 0 && len(fd.Hash) != 16 {
				t.Fatalf("malformed finding %+v", fd)
			}
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzRecipients: a "to" value the inspector allows names no domain outside
// example.com, read either way: by net/mail, or as the text after any '@' in
// the value and its decoded views.
func FuzzRecipients(f *testing.F) {
	for _, tc := range recipientCases() {
		if s, ok := tc.to.(string); ok {
			f.Add(s)
		}
	}
	in := newTestInspector(f, Limits{})
	allowed := func(d string) bool {
		d = strings.TrimSuffix(strings.ToLower(d), ".")
		if a, err := idna.Lookup.ToASCII(d); err == nil {
			d = a
		}
		return d == "example.com" || strings.HasSuffix(d, ".example.com")
	}
	f.Fuzz(func(t *testing.T, to string) {
		req := recipientRequest(to)
		var args struct{ To string }
		if json.Unmarshal(req.Arguments, &args) != nil {
			t.Skip()
		}
		to = strings.TrimSpace(args.To) // what the inspector reads
		r, err := in.Inspect(&req, &emailPolicy)
		if err != nil || destinationFindings(r) > 0 {
			return
		}
		if list, err := mail.ParseAddressList(to); err == nil {
			for _, a := range list {
				if d := a.Address[strings.LastIndexByte(a.Address, '@')+1:]; !allowed(d) {
					t.Fatalf("%q allowed; net/mail reads %q", to, a.Address)
				}
			}
		}
		var dec mime.WordDecoder
		views := []string{to}
		for v := to; len(views) < 8; {
			n, _ := canonical([]byte(v))
			if n == nil {
				d, err := dec.DecodeHeader(v)
				if err != nil || d == v {
					break
				}
				n = []byte(d)
			}
			v = string(n)
			views = append(views, v)
		}
		for _, v := range views {
			for i := strings.IndexByte(v, '@'); i >= 0; i = nextAt(v, i) {
				j := i + 1
				for j < len(v) && (isAlnum(v[j]) || strings.IndexByte("._-", v[j]) >= 0) {
					j++
				}
				if j < len(v) && v[j] >= 0x80 {
					continue // an internationalised name: net/mail and IDNA above
				}
				if !allowed(v[i+1 : j]) {
					t.Fatalf("%q allowed; a view has %q", to, v[max(0, i-20):j])
				}
			}
		}
	})
}

func nextAt(v string, i int) int {
	if k := strings.IndexByte(v[i+1:], '@'); k >= 0 {
		return i + 1 + k
	}
	return -1
}
