package egress

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

var testKey = []byte("0123456789abcdef-test-key")

func newTestInspector(t testing.TB, lim Limits) *Inspector {
	t.Helper()
	in, err := NewInspector(testKey, lim)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// Test values. The AWS ones are the documentation examples.
const (
	awsKey    = "AKIAIOSFODNN7EXAMPLE"
	awsSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	email     = "alice.smith@corp-payroll.io"
	ghToken   = "ghp_R2d2C3poL8kQ9zX7wV4bN1mA5sD6fG0hJ2kL"
	jwtTok    = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	slackTok  = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
	stripeKey = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
	openAIKey = "sk-proj-Ab3dEf7hIj9kLm1nOp5qRs2tUv8wXyZ0"
	antKey    = "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa-Q1w2E3r4T5y6U7i8O9p0"
	googleKey = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
	card      = "4111 1111 1111 1111"
	badCard   = "4111 1111 1111 1112"
	ssn       = "123-45-6789"
	iban      = "GB82 WEST 1234 5698 7654 32"
	badIBAN   = "GB82 WEST 1234 5698 7654 33"
	nino      = "AB123456C"
	pemKey    = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----"
)

var (
	gcpSA = `{"type": "service_account", "project_id": "p", "private_key_id": "8f0c2bd1a9e4f7c6b3a2d1e0f9c8b7a6d5e4f3a2", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n", "client_email": "svc@p.iam.gserviceaccount.com"}`
)

// Encodings a value may hide behind.
func pctAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

func uEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	return b.String()
}

func fullWidth(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 0x21 && r <= 0x7E {
			r += 0xFF01 - 0x21
		}
		b.WriteRune(r)
	}
	return b.String()
}

func interleave(s, sep string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteRune(r)
	}
	return b.String()
}

var encodings = map[string]func(string) string{
	"plain":         func(s string) string { return s },
	"base64":        func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
	"base64url":     func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte("~~>" + s + "?>")) },
	"hex":           func(s string) string { return hex.EncodeToString([]byte(s)) },
	"percent twice": func(s string) string { return strings.ReplaceAll(pctAll(s), "%", "%25") },
	"u escapes":     uEscape,
	"full-width":    fullWidth,
	"zero-width":    func(s string) string { return interleave(s, "\u200b") },
	"soft hyphen":   func(s string) string { return interleave(s, "\u00ad") },
	"word joiner":   func(s string) string { return interleave(s, "\u2060\ufeff") },
	"base64 of hex": func(s string) string { return base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString([]byte(s)))) },
	"percent base64": func(s string) string {
		return pctAll(base64.StdEncoding.EncodeToString([]byte(s)))
	},
}

// detectors returns "class/detector" of every finding, sorted and unique.
func detectors(r Result) []string {
	seen := map[string]bool{}
	var out []string
	for _, f := range r.Findings {
		k := f.Class + "/" + f.Detector
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func has(r Result, det string) bool {
	for _, f := range r.Findings {
		if f.Detector == det {
			return true
		}
	}
	return false
}

func jsonBody(fields map[string]any) []byte {
	b, _ := json.Marshal(fields)
	return b
}

// mcpCall is an MCP tools/call body.
func mcpCall(id int, args map[string]any) map[string]any {
	return map[string]any{"jsonrpc": "2.0", "id": id, "method": "tools/call",
		"params": map[string]any{"name": "search", "arguments": args}}
}

func TestEncodings(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	values := map[string]string{"aws_access_key_id": awsKey, "email": email}
	for enc, f := range encodings {
		for det, v := range values {
			t.Run(enc+"/"+det, func(t *testing.T) {
				encoded := f(v)
				// In a JSON body, raw (u escapes must stay escaped, so build by hand).
				body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"db","arguments":{"note":"` + encoded + `"}}}`)
				req := &Request{Method: "POST", Path: "/", Body: body, ContentType: "application/json", ToolClass: "write", RouteHost: "db.internal", Authority: "db.internal"}
				r, err := in.Inspect(req, &Policy{})
				if err != nil {
					t.Fatalf("Inspect: %v", err)
				}
				if !has(r, det) {
					t.Errorf("%s hidden by %s not found; findings %v", det, enc, r.Findings)
				}
				// And in the query string.
				req = &Request{Method: "GET", Path: "/q", RawQuery: "x=" + encoded, ToolClass: "read", RouteHost: "db.internal"}
				r, err = in.Inspect(req, &Policy{})
				if err != nil {
					t.Fatalf("Inspect query: %v", err)
				}
				if !has(r, det) {
					t.Errorf("query: %s hidden by %s not found; findings %v", det, enc, r.Findings)
				}
			})
		}
	}
}

type tcase struct {
	req     Request
	pol     Policy
	want    []string // class/detector, sorted
	wantErr bool
	secrets []string // values that must not appear in the result or error
}

func run(t *testing.T, in *Inspector, name string, tc tcase) (Result, error) {
	t.Helper()
	req := tc.req
	if req.RouteHost == "" && req.Authority == "" {
		req.RouteHost, req.Authority = "tool.internal", "tool.internal"
	}
	if req.ToolClass == "" {
		req.ToolClass = "write"
	}
	r, err := in.Inspect(&req, &tc.pol)
	if tc.wantErr {
		if err == nil {
			t.Errorf("%s: want error, got %v", name, r.Findings)
		} else if reason.CodeOf(err) != reason.EgressBlocked {
			t.Errorf("%s: error code %s, want %s", name, reason.CodeOf(err), reason.EgressBlocked)
		}
		return r, err
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if diff := cmp.Diff(tc.want, detectors(r)); diff != "" {
		t.Errorf("%s: detectors (-want +got):\n%s\nfindings: %+v", name, diff, r.Findings)
	}
	return r, err
}

func detectorCases() map[string]tcase {
	body := func(s string) Request { return Request{Body: []byte(s), ContentType: "text/plain"} }
	return map[string]tcase{
		"clean json":            {req: Request{Body: jsonBody(mcpCall(1, map[string]any{"query": "quarterly revenue by region", "limit": 10})), ContentType: "application/json"}, want: nil},
		"aws key id":            {req: body("key " + awsKey + " here"), want: []string{"secret/aws_access_key_id"}, secrets: []string{awsKey}},
		"aws key inside a word": {req: body("XAKIAIOSFODNN7EXAMPLEX"), want: nil},
		"aws secret in context": {req: body("aws_secret_access_key = " + awsSecret), want: []string{"secret/aws_secret_access_key"}, secrets: []string{awsSecret}},
		"aws secret json": {req: body(`{"AccessKeyId":"` + awsKey + `","SecretAccessKey":"` + awsSecret + `"}`),
			want: []string{"secret/aws_access_key_id", "secret/aws_secret_access_key"}, secrets: []string{awsKey, awsSecret}},
		"gcp service account":   {req: body(gcpSA), want: []string{"pii/email", "secret/gcp_service_account_key", "secret/private_key"}, secrets: []string{"8f0c2bd1a9e4f7c6b3a2d1e0f9c8b7a6d5e4f3a2"}},
		"pem key":               {req: body(pemKey), want: []string{"secret/private_key"}, secrets: []string{"MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"}},
		"pem public key":        {req: body("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOE\n-----END PUBLIC KEY-----"), want: nil},
		"jwt":                   {req: body("token: " + jwtTok), want: []string{"secret/jwt"}, secrets: []string{jwtTok}},
		"jwt in header":         {req: Request{Headers: map[string]string{"x-upstream-token": jwtTok}}, want: []string{"secret/jwt"}, secrets: []string{jwtTok}},
		"authorization skipped": {req: Request{Headers: map[string]string{"authorization": "Bearer " + jwtTok, "x-aisecops-plan": jwtTok}}, want: nil},
		"github token":          {req: body("GITHUB_TOKEN " + ghToken), want: []string{"secret/github_token"}, secrets: []string{ghToken}},
		"slack token":           {req: body(slackTok), want: []string{"secret/slack_token"}, secrets: []string{slackTok}},
		"stripe key":            {req: body(stripeKey), want: []string{"secret/stripe_secret_key"}, secrets: []string{stripeKey}},
		"openai key":            {req: body("OPENAI " + openAIKey), want: []string{"secret/openai_api_key"}, secrets: []string{openAIKey}},
		"sk- slug is not a key": {req: body("see the sk-learn-classifier-module docs"), want: nil},
		"anthropic key":         {req: body(antKey), want: []string{"secret/anthropic_api_key"}, secrets: []string{antKey}},
		"google api key":        {req: body(googleKey), want: []string{"secret/google_api_key"}, secrets: []string{googleKey}},
		"generic secret":        {req: body(`{"client_secret": "Zx8kQ2mN7pL4vB9cR1tY6wE3"}`), want: []string{"secret/generic_secret"}, secrets: []string{"Zx8kQ2mN7pL4vB9cR1tY6wE3"}},
		"low entropy token":     {req: body(`{"max_tokens": 1024, "token_type": "bearer_bearer_bearer_bearer"}`), want: nil},
		"card valid":            {req: body("card " + card + " exp 12/29"), want: []string{"pii/payment_card"}, secrets: []string{card, "4111111111111111"}},
		"card dashes":           {req: body("4111-1111-1111-1111"), want: []string{"pii/payment_card"}, secrets: []string{"4111111111111111"}},
		"card amex":             {req: body(`{"pan":378282246310005}`), want: []string{"pii/payment_card"}, secrets: []string{"378282246310005"}},
		"card luhn invalid":     {req: body("card " + badCard), want: nil},
		"card in longer number": {req: body("id 41111111111111110000"), want: nil},
		"epoch millis":          {req: body(`{"ts":1699999999999}`), want: nil},
		"ssn":                   {req: body("ssn " + ssn), want: []string{"pii/us_ssn"}, secrets: []string{ssn, "123456789"}},
		"ssn area 666":          {req: body("666-12-3456"), want: nil},
		"ssn area 000":          {req: body("000-12-3456"), want: nil},
		"ssn area 9xx":          {req: body("912-12-3456"), want: nil},
		"iban valid":            {req: body("pay to " + iban), want: []string{"pii/iban"}, secrets: []string{"GB82WEST12345698765432"}},
		"iban compact":          {req: body("DE89370400440532013000"), want: []string{"pii/iban"}, secrets: []string{"DE89370400440532013000"}},
		"iban invalid":          {req: body("pay to " + badIBAN), want: nil},
		"nino":                  {req: body("NI " + nino), want: []string{"pii/uk_nino"}, secrets: []string{nino}},
		"nino bad prefix":       {req: body("GB123456C"), want: nil},
		"email":                 {req: body("write to " + email), want: []string{"pii/email"}, secrets: []string{email}},
		"not an email":          {req: body("user@localhost and a@b"), want: nil},
		"secret in path":        {req: Request{Path: "/upload/" + base64.StdEncoding.EncodeToString([]byte(awsKey))}, want: []string{"secret/aws_access_key_id"}, secrets: []string{awsKey}},
		"secret in header name": {req: Request{Headers: map[string]string{"x-" + strings.ToLower(ghToken): "1"}}, want: nil},
		"email in header":       {req: Request{Headers: map[string]string{"x-user": email}}, want: []string{"pii/email"}, secrets: []string{email}},
		"size over class":       {req: Request{ToolClass: "read", Body: bytes.Repeat([]byte("a "), 40<<10)}, want: []string{"size/payload_size"}},
		"size policy override":  {req: Request{ToolClass: "read", Body: bytes.Repeat([]byte("a "), 100)}, pol: Policy{MaxBodyBytes: map[string]int{"read": 100}}, want: []string{"size/payload_size"}},
		"json-rpc batch second element": {
			req:     Request{Body: []byte(`[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x","arguments":{"k":"` + awsKey + `"}}}]`), ContentType: "application/json"},
			want:    []string{"secret/aws_access_key_id"},
			secrets: []string{awsKey},
		},
		"case-variant keys": {
			req:     Request{Body: []byte(`{"method":"tools/list","Method":"tools/call","params":{"arguments":{"a":"x"}},"Params":{"arguments":{"a":"` + ghToken + `"}}}`), ContentType: "application/json"},
			want:    []string{"secret/github_token"},
			secrets: []string{ghToken},
		},
		"classification marker":            {req: body("CONFIDENTIAL - board minutes"), want: []string{"sensitive/classification_marker"}},
		"confidential lower case is noise": {req: body("this email is confidential"), want: nil},
		"too deep":                         {req: body(nestB64("a perfectly ordinary sentence, nested", 5)), wantErr: true},
		"deep but within the bound":        {req: body(nestB64("key "+awsKey, 3)), want: []string{"secret/aws_access_key_id"}, secrets: []string{awsKey}},
	}
}

func nestB64(s string, n int) string {
	for range n {
		s = base64.StdEncoding.EncodeToString([]byte(s))
	}
	return s
}

func TestDetectors(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	for name, tc := range detectorCases() {
		t.Run(name, func(t *testing.T) { run(t, in, name, tc) })
	}
}

func TestBatchLocation(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	tc := detectorCases()["json-rpc batch second element"]
	r, _ := run(t, in, "batch", tc)
	want := []Finding{{Detector: "aws_access_key_id", Location: "body[1]", Class: ClassSecret, Count: 1, Hash: in.hash([]byte(awsKey))}}
	if diff := cmp.Diff(want, r.Findings); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func multipartBody(t testing.TB, parts ...[2]string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="`+p[0]+`"`)
		h.Set("Content-Type", "text/plain")
		pw, err := w.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		pw.Write([]byte(p[1]))
	}
	w.Close()
	return buf.Bytes(), w.FormDataContentType()
}

func TestMultipart(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	b, ct := multipartBody(t, [2]string{"a", "hello"}, [2]string{"b", "key " + awsKey})
	r, err := in.Inspect(&Request{Body: b, ContentType: ct, ToolClass: "write", RouteHost: "h", Authority: "h"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Finding{{Detector: "aws_access_key_id", Location: "body.part[1]", Class: ClassSecret, Count: 1, Hash: in.hash([]byte(awsKey))}}
	if diff := cmp.Diff(want, r.Findings); diff != "" {
		t.Errorf("secret in second part (-want +got):\n%s", diff)
	}

	// A part's headers are inspected too, and a base64 transfer encoding undone.
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	pw, _ := w.CreatePart(textproto.MIMEHeader{"Content-Disposition": {`form-data; name="f"; filename="` + email + `"`}})
	pw.Write([]byte("x"))
	pw, _ = w.CreatePart(textproto.MIMEHeader{"Content-Transfer-Encoding": {"base64"}})
	pw.Write([]byte(base64.StdEncoding.EncodeToString([]byte("token " + ghToken))))
	w.Close()
	r, err = in.Inspect(&Request{Body: buf.Bytes(), ContentType: w.FormDataContentType(), ToolClass: "write"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"pii/email", "secret/github_token"}, detectors(r)); diff != "" {
		t.Errorf("part header and base64 part (-want +got):\n%s", diff)
	}

	// Declared multipart that does not parse: denied.
	_, err = in.Inspect(&Request{Body: []byte("--x\r\nbroken"), ContentType: `multipart/form-data; boundary=x`, ToolClass: "write"}, nil)
	if reason.CodeOf(err) != reason.EgressBlocked {
		t.Errorf("malformed multipart: err %v, want %s", err, reason.EgressBlocked)
	}
}

func gzipBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// zeros is an io.Reader of n zero bytes that never holds them in memory.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.n {
		p = p[:z.n]
	}
	clear(p)
	z.n -= int64(len(p))
	return len(p), nil
}

// gzipBomb is 1 GiB of zeros as concatenated gzip members (a valid gzip
// stream; Go and most servers read every member): 1 MiB compressed once,
// repeated, so building it costs milliseconds and never holds the zeros.
func gzipBomb(t testing.TB) []byte {
	var member bytes.Buffer
	w, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	io.Copy(w, &zeros{n: 1 << 20})
	w.Close()
	return bytes.Repeat(member.Bytes(), 1024)
}

func deflateBomb(t testing.TB, n int64) []byte {
	var buf bytes.Buffer
	w, _ := zlib.NewWriterLevel(&buf, zlib.BestSpeed)
	io.Copy(w, &zeros{n: n})
	w.Close()
	return buf.Bytes()
}

func TestCompression(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	secret := []byte(`{"note":"key ` + awsKey + `"}`)
	var zbuf bytes.Buffer
	zw := zlib.NewWriter(&zbuf)
	zw.Write(secret)
	zw.Close()

	cases := map[string]struct {
		enc     string
		body    []byte
		lim     Limits
		want    []string
		wantErr error // or errRatio for the bombs, whichever cap trips first
	}{
		"gzip":               {enc: "gzip", body: gzipBytes(t, secret), want: []string{"secret/aws_access_key_id"}},
		"deflate (zlib)":     {enc: "deflate", body: zbuf.Bytes(), want: []string{"secret/aws_access_key_id"}},
		"gzip twice":         {enc: "gzip, gzip", body: gzipBytes(t, gzipBytes(t, secret)), want: []string{"secret/aws_access_key_id"}},
		"undeclared gzip":    {body: gzipBytes(t, secret), want: []string{"secret/aws_access_key_id"}},
		"gzip bomb 1 GiB":    {enc: "gzip", body: gzipBomb(t), wantErr: errDecompressed},
		"deflate bomb":       {enc: "deflate", body: deflateBomb(t, 24<<20), wantErr: errDecompressed},
		"ratio cap":          {enc: "gzip", body: gzipBytes(t, make([]byte, 4<<20)), lim: Limits{MaxCompressionRatio: 50}, wantErr: errRatio},
		"corrupt gzip":       {enc: "gzip", body: []byte("\x1f\x8b\x08\x00garbage-garbage"), wantErr: errCorrupt},
		"truncated gzip":     {enc: "gzip", body: gzipBytes(t, secret)[:20], wantErr: errCorrupt},
		"unsupported brotli": {enc: "br", body: []byte("x"), wantErr: errEncoding},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			in := in
			if tc.lim != (Limits{}) {
				in = newTestInspector(t, tc.lim)
			}
			r, err := in.Inspect(&Request{Body: tc.body, ContentEncoding: tc.enc, ContentType: "application/json", ToolClass: "write", RouteHost: "h", Authority: "h"}, nil)
			if tc.wantErr != nil {
				bomb := tc.wantErr == errDecompressed && errors.Is(err, errRatio)
				if !errors.Is(err, tc.wantErr) && !bomb || reason.CodeOf(err) != reason.EgressBlocked {
					t.Fatalf("err %v, want %v as %s", err, tc.wantErr, reason.EgressBlocked)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, detectors(r)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestNoValueLeaks marshals the result and the error of every table case and
// looks for each secret and its encodings.
func TestNoValueLeaks(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	all := map[string]tcase{}
	for k, v := range detectorCases() {
		all[k] = v
	}
	for k, v := range destinationCases() {
		all["dest/"+k] = v
	}
	for k, v := range llmCases() {
		all["llm/"+k] = v.tcase
	}
	for enc, f := range encodings {
		for _, v := range []string{awsKey, email, ghToken, jwtTok} {
			all["enc/"+enc+"/"+v] = tcase{req: Request{Body: []byte(`{"a":"` + f(v) + `"}`), Headers: map[string]string{"x-h": f(v)}, RawQuery: "q=" + f(v), Path: "/" + f(v)}, secrets: []string{v}}
		}
	}
	n := 0
	for name, tc := range all {
		req := tc.req
		r, err := in.Inspect(&req, &tc.pol)
		out, _ := json.Marshal(r)
		text := string(out)
		if err != nil {
			text += err.Error()
			var re *reason.Error
			if errors.As(err, &re) {
				text += re.Message
			}
		}
		low := strings.ToLower(text)
		for _, s := range tc.secrets {
			n++
			forms := []string{s, strings.ToLower(s), base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s)), hex.EncodeToString([]byte(s)), pctAll(s)}
			if d := digitsOnly(s); len(d) >= 9 {
				forms = append(forms, d)
			}
			for _, f := range forms {
				if len(f) >= 6 && strings.Contains(low, strings.ToLower(f)) {
					t.Errorf("%s: value form %q appears in the result or error", name, f)
				}
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d values checked; the table lost its secrets", n)
	}
}

func digitsOnly(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c >= '0' && c <= '9' {
			b.WriteRune(c)
		}
	}
	return b.String()
}

func TestHash(t *testing.T) {
	t.Parallel()
	a := newTestInspector(t, Limits{})
	b, _ := NewInspector([]byte("another-key-of-16-bytes"), Limits{})
	if h := a.hash([]byte(awsKey)); len(h) != 16 || h != a.hash([]byte(awsKey)) || h == b.hash([]byte(awsKey)) {
		t.Errorf("hash %q: want 16 hex chars, stable per key, different across keys", h)
	}
	if _, err := NewInspector([]byte("short"), Limits{}); err == nil {
		t.Error("short key accepted")
	}
	// The same card written differently correlates.
	r1, _ := a.Inspect(&Request{Body: []byte("4111 1111 1111 1111")}, nil)
	r2, _ := a.Inspect(&Request{Body: []byte("4111-1111-1111-1111")}, nil)
	if len(r1.Findings) != 1 || len(r2.Findings) != 1 || r1.Findings[0].Hash != r2.Findings[0].Hash {
		t.Errorf("card hashes differ by separator: %v %v", r1.Findings, r2.Findings)
	}
}

func TestCountsAndDedup(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	// Written twice plainly, once escaped: two occurrences, one finding; the
	// escaped copy is the same value and adds nothing.
	body := []byte(`{"a":"` + awsKey + `","b":"` + awsKey + `","c":"` + uEscape(awsKey) + `"}`)
	r, err := in.Inspect(&Request{Body: body, ToolClass: "write"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Finding{{Detector: "aws_access_key_id", Location: "body", Class: ClassSecret, Count: 2, Hash: in.hash([]byte(awsKey))}}
	if diff := cmp.Diff(want, r.Findings); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	lim := newTestInspector(t, Limits{MaxFindings: 2})
	r, err = lim.Inspect(&Request{Body: []byte("a1@x.com a2@x.com a3@x.com"), ToolClass: "write"}, nil)
	if err != nil || len(r.Findings) != 2 || !r.Truncated {
		t.Errorf("MaxFindings: %v %+v", err, r)
	}
}

// TestInspectionStopsAtTheDeadline: a body that takes long to decode is not
// scanned past the request's deadline: inspection stops with an error at the
// next decoding step.
func TestInspectionStopsAtTheDeadline(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte(`{"k":"`+strings.Repeat("A", 1000)+`"}`), 2000))
	zw.Close()
	done := make(chan struct{})
	close(done)
	_, err := in.Inspect(&Request{Method: "POST", Path: "/", Authority: "h", RouteHost: "h", ToolClass: "read",
		ContentType: "application/json", ContentEncoding: "gzip", Body: gz.Bytes(), Cancel: done}, &Policy{})
	if err == nil {
		t.Fatal("inspection ran past a passed deadline")
	}
}

// TestRedact: agent-written strings carrying a secret or personal data are
// replaced by a stable keyed hash; ordinary ones pass.
func TestRedact(t *testing.T) {
	t.Parallel()
	in := newTestInspector(t, Limits{})
	for v, redacted := range map[string]bool{
		"retrieval":       false,
		"kb_search":       false,
		"run-42":          false,
		awsKey:            true,
		"label " + awsKey: true,
		base64.StdEncoding.EncodeToString([]byte("aws_secret_access_key=" + awsSecret)): true,
		"alice@example.org": true,
	} {
		got := in.Redact(v)
		if (got != v) != redacted || (redacted && (!strings.HasPrefix(got, "redacted:") || strings.Contains(got, v))) {
			t.Errorf("Redact(%q) = %q, want redacted %v", v, got, redacted)
		}
		if in.Redact(v) != got {
			t.Errorf("Redact(%q) is not stable", v)
		}
	}
}
