package egress

import (
	"bytes"
	"encoding/json"
	"sort"
	"strconv"
)

// mask selects the detector families run over a piece of text.
type mask uint8

const (
	mSecret mask = 1 << iota
	mPII
	mSensitive
	mURL       // URLs whose host must agree with the route
	mInjection // instruction-injection phrases (context firewall only)

	mDLP = mSecret | mPII | mSensitive
)

type findingKey struct{ det, loc, hash string }
type valueKey struct{ det, hash string }

// collector aggregates findings. Views derived by decoding add a finding only
// when they reveal a value not already found, so a secret written plainly and
// also seen through an unescaping view is counted once.
type collector struct {
	idx       map[findingKey]int
	seen      map[valueKey]bool
	hashes    map[string]bool // every value hash found, any detector
	list      []Finding
	max       int
	truncated bool
}

func (c *collector) add(det, class, loc, hash string, derived bool) {
	vk := valueKey{det, hash}
	if derived && c.seen[vk] {
		return
	}
	k := findingKey{det, loc, hash}
	if i, ok := c.idx[k]; ok {
		c.list[i].Count++
		return
	}
	if len(c.list) >= c.max {
		c.truncated = true
		return
	}
	if c.idx == nil { // made on the first finding: most scans find nothing
		c.idx, c.seen, c.hashes = map[findingKey]int{}, map[valueKey]bool{}, map[string]bool{}
	}
	c.idx[k] = len(c.list)
	c.seen[vk] = true
	c.hashes[hash] = true
	c.list = append(c.list, Finding{Detector: det, Location: loc, Class: class, Count: 1, Hash: hash})
}

// scan is the state of one inspection.
type scan struct {
	in     *Inspector
	req    *Request
	pol    *Policy
	col    collector
	budget int // decoded bytes still allowed
	// suppress holds hashes of email addresses that are allowed destination
	// arguments: an ordinary recipient is not leaked PII.
	suppress map[string]bool
	dests    []string     // Policy.Destinations as allowedDest compares them (lazy)
	hosts    []string     // normalised RouteHost and AllowedHosts
	sniffed  []byte       // an undeclared gzip body, decompressed
	next     []int        // detect's per-literal resume offsets (scratch)
	doneVals map[int]bool // detect's judged assignment values (scratch)
	generic  [][]byte     // detect's generic-secret candidates (scratch)
	digits   [24]byte     // digitRun's digits (scratch)
	ibanBuf  [34]byte
	ninoBuf  [9]byte
	decBuf   []byte            // decodeRun's output before the printable check (scratch)
	hashes   map[string]string // value → hash, so a value repeated a million times costs one HMAC
	llm      *LLMSummary
}

func newScan(in *Inspector, req *Request, pol *Policy) *scan {
	s, _ := in.scans.Get().(*scan)
	if s == nil {
		s = new(scan)
	}
	// Everything but the cursor scratch, which detect clears before use, is
	// made anew: nothing of an earlier scan carries over.
	*s = scan{
		in: in, req: req, pol: pol,
		col:    collector{max: in.lim.MaxFindings}, // its maps and suppress: made on first use
		budget: in.lim.MaxDecodedBytes,
		next:   s.next,
	}
	if h := normHost(req.RouteHost); h != "" {
		s.hosts = append(s.hosts, h)
	}
	for _, h := range pol.AllowedHosts {
		if h = normHostPattern(h); h != "" {
			s.hosts = append(s.hosts, h)
		}
	}
	return s
}

// release hands the scan back to its Inspector for reuse, holding nothing
// of this one but the cursor scratch (see newScan). The scan must not be
// used after.
func (s *scan) release() {
	in, next := s.in, s.next
	*s = scan{next: next}
	in.scans.Put(s)
}

func (s *scan) result() Result {
	r := Result{Findings: s.col.list, Truncated: s.col.truncated, LLM: s.llm}
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if a.Class != b.Class {
			return a.Class < b.Class
		}
		if a.Detector != b.Detector {
			return a.Detector < b.Detector
		}
		if a.Location != b.Location {
			return a.Location < b.Location
		}
		return a.Hash < b.Hash
	})
	return r
}

// value records a finding about a matched value (normalised by the detector).
func (s *scan) value(det, class, loc string, v []byte, derived bool) {
	h, ok := s.hashes[string(v)]
	if !ok {
		h = s.in.hash(v)
		if len(s.hashes) < maxHashCache {
			if s.hashes == nil {
				s.hashes = map[string]string{}
			}
			s.hashes[string(v)] = h
		}
	}
	if class == ClassPII && s.suppress[h] {
		return
	}
	s.col.add(det, class, loc, h, derived)
}

const maxHashCache = 4096

// shape records a finding about the request's form rather than a value.
func (s *scan) shape(det, class, loc string) { s.col.add(det, class, loc, "", false) }

func (s *scan) run() error {
	req := s.req
	body, err := s.decodeBody(req.Body, req.ContentEncoding)
	if err != nil {
		return err
	}
	s.checkHosts()
	s.checkDestinationArgs(body)

	if err := s.text([]byte(req.Path), "path", 0, mDLP|mURL, false); err != nil {
		return err
	}
	if err := s.text([]byte(req.RawQuery), "query", 0, mDLP|mURL, false); err != nil {
		return err
	}
	names := make([]string, 0, len(req.Headers))
	for n := range req.Headers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if skipHeader(n) {
			continue
		}
		before := len(s.col.list)
		if err := s.text([]byte(n), "header-name", 0, mSecret|mPII, false); err != nil {
			return err
		}
		loc := "header"
		// The name goes into the location only when it is a plain header name
		// that no detector fired on: a header name is agent-chosen text too.
		if len(s.col.list) == before && safeName(n) {
			loc = "header:" + n
		}
		if err := s.text([]byte(req.Headers[n]), loc, 0, mSecret|mPII, false); err != nil {
			return err
		}
	}

	max := DefaultMaxBodyBytes(req.ToolClass)
	if m, ok := s.pol.MaxBodyBytes[req.ToolClass]; ok && m > 0 {
		max = m
	}
	if len(body) > max {
		s.shape("payload_size", ClassSize, "body")
	}
	if len(body) > 0 {
		bm := mDLP | mURL
		if req.ToolClass == "llm" {
			// A prompt is text for a model, not a request the model's host
			// fetches: URLs in it are not destinations.
			bm = mDLP
			if err := s.firewall(body); err != nil {
				return err
			}
		}
		if err := s.body(body, req.ContentType, "body", bm, 0); err != nil {
			return err
		}
	}
	if len(s.sniffed) > 0 {
		if err := s.text(s.sniffed, "body+gzip", 1, mDLP, true); err != nil {
			return err
		}
	}
	if len(req.Arguments) > 0 {
		// Arguments normally come from the body and were seen there; they may
		// also come from the plan header, which never reaches the upstream but
		// still says where the tool will send.
		if err := s.text(req.Arguments, "arguments", 0, mURL, true); err != nil {
			return err
		}
	}
	return nil
}

func safeName(n string) bool {
	if len(n) == 0 || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// body inspects a (decompressed) body by its content type.
func (s *scan) body(b []byte, contentType, loc string, m mask, nest int) error {
	if boundary, ok := multipartBoundary(contentType); ok {
		if err := s.multipart(b, boundary, loc, m, nest); err != nil {
			return err
		}
		// The raw text too, as a derived view: a parser on the upstream that
		// reads the body differently (a preamble, a part we stopped at) must
		// not find anything we did not.
		return s.text(b, loc, 0, m, true)
	}
	if elems := jsonArray(b); elems != nil {
		// A JSON-RPC batch (or any top-level array): every element, each
		// with its own location.
		for i, e := range elems {
			if err := s.text(e, loc+"["+strconv.Itoa(i)+"]", 0, m, false); err != nil {
				return err
			}
		}
		return nil
	}
	return s.text(b, loc, 0, m, false)
}

// jsonArray splits a top-level JSON array into its elements' raw text, or
// returns nil when b is not one.
func jsonArray(b []byte) []json.RawMessage {
	t := bytes.TrimLeft(b, " \t\r\n")
	if len(t) == 0 || t[0] != '[' {
		return nil
	}
	var elems []json.RawMessage
	if json.Unmarshal(t, &elems) != nil || len(elems) == 0 {
		return nil
	}
	return elems
}
