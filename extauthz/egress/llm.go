package egress

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// The context firewall (AIS-CTX-01/02, AIS-EDG-01) for model calls. It parses
// OpenAI chat-completions (messages[].content as a string or parts), OpenAI
// responses (instructions, input as a string or items, function_call_output)
// and Anthropic messages (system, messages[].content as a string or blocks,
// tool_result blocks with nested content) request bodies into units, one per
// system prompt or message, and decides each unit's provenance:
//
//   - trusted: system and developer prompts (the agent's own instructions),
//     and the first user message when the route declares it trusted
//     (Request.TrustFirstUserMessage) and no provenance label marks the
//     context untrusted;
//   - untrusted: everything else — user and assistant messages included,
//     because agents put retrieved text there and external context is
//     adversarial by default (AISecOps principle 4.1). Tool and function roles,
//     tool_result / function_call_output / document blocks are untrusted
//     whatever the route says. Labels the agent writes can only make more of
//     the context untrusted, never less.
//
// Untrusted units are inspected for instruction injection, through the same
// canonical views as everything else. Secrets and PII in the prompt are found
// by the body's DLP pass like any other body. The summary (roles, which units
// were untrusted or flagged, a keyed hash per unit) is the provenance the
// caller records in the audit line.

// LLMSummary is the context firewall's view of one model call.
type LLMSummary struct {
	// Format is openai_chat, openai_responses, anthropic_messages or unknown.
	Format string `json:"format"`
	// Units counts system prompts and messages; Roles counts them per role
	// (system, developer, user, assistant, tool, function, other).
	Units int            `json:"units"`
	Roles map[string]int `json:"roles"`
	// Untrusted and Injection list unit indices (in request order, a
	// top-level system prompt first), at most maxUnitsListed each.
	Untrusted []int `json:"untrusted,omitempty"`
	Injection []int `json:"injection,omitempty"`
	// Hashes is the keyed hash of each untrusted unit's text, so a poisoned
	// tool result can be followed from the call that fetched it to the prompt
	// that carried it (at most maxUnitsListed).
	Hashes []string `json:"hashes,omitempty"`
}

const maxUnitsListed = 256

type llmBody struct {
	Messages     []llmItem       `json:"messages"`
	System       json.RawMessage `json:"system"`
	Input        json.RawMessage `json:"input"`
	Instructions json.RawMessage `json:"instructions"`
}

type llmItem struct {
	Role      string          `json:"role"`
	Type      string          `json:"type"`
	Content   json.RawMessage `json:"content"`
	Output    json.RawMessage `json:"output"`
	Text      json.RawMessage `json:"text"`
	Arguments json.RawMessage `json:"arguments"`
	ToolCalls []struct {
		Function struct {
			Arguments json.RawMessage `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

type llmBlock struct {
	Type    string          `json:"type"`
	Text    json.RawMessage `json:"text"`
	Content json.RawMessage `json:"content"`
	Output  json.RawMessage `json:"output"`
	Input   json.RawMessage `json:"input"`
	Source  struct {
		Data json.RawMessage `json:"data"`
	} `json:"source"`
}

type unit struct {
	role      string
	untrusted bool
	text      []byte
}

func knownRole(r string) string {
	switch r = strings.ToLower(r); r {
	case "system", "developer", "user", "assistant", "tool", "function":
		return r
	}
	return "other"
}

func (s *scan) firewall(body []byte) error {
	sum := &LLMSummary{Format: "unknown", Roles: map[string]int{}}
	s.llm = sum
	var units []unit
	var lb llmBody
	if json.Unmarshal(body, &lb) == nil {
		units = s.llmUnits(&lb, sum)
	}
	if units == nil {
		// Not a body we understand: the whole of it is one untrusted unit.
		units = []unit{{role: "other", untrusted: true, text: body}}
	}
	sum.Units = len(units)
	for i, u := range units {
		sum.Roles[u.role]++
		if !u.untrusted {
			continue
		}
		listed := len(sum.Untrusted) < maxUnitsListed
		if listed {
			sum.Untrusted = append(sum.Untrusted, i)
			sum.Hashes = append(sum.Hashes, s.in.hash(u.text))
		}
		before := len(s.col.list)
		loc := "llm[" + strconv.Itoa(i) + "]." + u.role
		if err := s.text(u.text, loc, 0, mInjection, false); err != nil {
			return err
		}
		if len(s.col.list) > before && len(sum.Injection) < maxUnitsListed {
			sum.Injection = append(sum.Injection, i)
		}
	}
	return nil
}

func (s *scan) llmUnits(lb *llmBody, sum *LLMSummary) []unit {
	var units []unit
	trustFirstUser := s.req.TrustFirstUserMessage && !s.req.UntrustedContext
	sawUser := false
	add := func(role string, untrusted bool, text []byte) {
		role = knownRole(role)
		switch {
		case role == "system" || role == "developer":
		case role == "user" && !sawUser && trustFirstUser:
		default:
			untrusted = true
		}
		sawUser = sawUser || role == "user"
		units = append(units, unit{role: role, untrusted: untrusted, text: text})
	}
	path := s.req.Path
	switch {
	case strings.Contains(path, "/messages") || len(lb.System) > 0 && len(lb.Messages) > 0:
		sum.Format = "anthropic_messages"
	case strings.Contains(path, "/responses") || len(lb.Input) > 0:
		sum.Format = "openai_responses"
	case len(lb.Messages) > 0:
		sum.Format = "openai_chat"
	default:
		return nil
	}
	if t, u := contentText(lb.System); len(t) > 0 {
		add("system", u, t)
	}
	if t, u := contentText(lb.Instructions); len(t) > 0 {
		add("system", u, t)
	}
	var items []llmItem
	if len(lb.Input) > 0 {
		var str string
		if json.Unmarshal(lb.Input, &str) == nil {
			add("user", false, []byte(str))
		} else if json.Unmarshal(lb.Input, &items) != nil {
			items = nil
		}
	}
	for _, it := range append(lb.Messages, items...) {
		role := it.Role
		untrusted := false
		var text []byte
		switch it.Type {
		case "function_call_output", "computer_call_output", "mcp_call_output", "custom_tool_call_output":
			role, untrusted = "tool", true
			text, _ = contentText(it.Output)
		case "function_call", "custom_tool_call":
			role = "assistant"
			text = jsonText(it.Arguments)
		default:
			var u bool
			text, u = contentText(it.Content)
			untrusted = u
		}
		for _, tc := range it.ToolCalls {
			text = appendText(text, jsonText(tc.Function.Arguments))
		}
		if r := strings.ToLower(role); r == "tool" || r == "function" {
			untrusted = true
		}
		add(role, untrusted, text)
	}
	if units == nil {
		units = []unit{}
	}
	return units
}

// contentText flattens a content value (a string, or a list of parts or
// blocks) into text, and reports whether any block carried tool output or a
// document (untrusted by nature).
func contentText(raw json.RawMessage) ([]byte, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, false
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return []byte(str), false
	}
	var blocks []llmBlock
	if json.Unmarshal(raw, &blocks) != nil {
		var one llmBlock
		if json.Unmarshal(raw, &one) != nil {
			return jsonText(raw), false
		}
		blocks = []llmBlock{one}
	}
	var out []byte
	untrusted := false
	for _, b := range blocks {
		switch b.Type {
		case "tool_result", "function_call_output", "document", "search_result", "web_search_tool_result", "mcp_tool_result":
			untrusted = true
		}
		t, _ := contentText(b.Text)
		out = appendText(out, t)
		for _, r := range []json.RawMessage{b.Content, b.Output, b.Source.Data} {
			t, u := contentText(r)
			out = appendText(out, t)
			untrusted = untrusted || u
		}
		out = appendText(out, jsonText(b.Input))
	}
	return out, untrusted
}

// jsonText is a JSON value's text: a string's value, or the raw JSON.
func jsonText(raw json.RawMessage) []byte {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return []byte(str)
	}
	return raw
}

func appendText(out, t []byte) []byte {
	if len(t) == 0 {
		return out
	}
	if len(out) > 0 {
		out = append(out, '\n')
	}
	return append(out, t...)
}

// Instruction injection: a word-level scan (linear, no regular expressions)
// over the lowercased text with a small window of recent tokens.

// Word classes of the injection scan. A token's classes are looked up once.
const (
	wVerb      uint32 = 1 << iota // ignore, disregard …
	wFiller                       // all, the, your, previous …
	wQualifier                    // previous, prior, system …
	wObject                       // instructions, prompt, rules …
	wExVerb                       // forward, send, upload …
	wExObject                     // conversation, history, data …
	wNow
	wAre
	wYou
	wTo
	wNew // new, updated
	wInstructions
	wMode
	wModeKind // developer, dan, jailbreak
)

// lexicon maps words to their classes, built once per Inspector.
type lexicon map[string]uint32

func newLexicon() lexicon {
	l := lexicon{}
	add := func(f uint32, ws ...string) {
		for _, w := range ws {
			l[w] |= f
		}
	}
	add(wVerb, "ignore", "disregard", "forget", "override", "bypass", "skip", "abandon", "drop")
	add(wFiller, "all", "any", "the", "your", "my", "of", "these", "those", "and", "every", "everything", "above", "previous", "prior", "earlier", "preceding", "system", "original", "initial", "existing", "current", "safety", "developer")
	add(wQualifier, "previous", "prior", "above", "earlier", "preceding", "system", "original", "initial", "existing", "current", "safety", "developer", "all")
	add(wObject, "instructions", "instruction", "prompt", "prompts", "rules", "directions", "guidelines", "context", "messages", "commands", "directives", "policies", "constraints", "guardrails")
	add(wExVerb, "forward", "send", "email", "mail", "post", "upload", "transmit", "exfiltrate", "leak", "share", "copy", "cc", "bcc", "relay", "deliver")
	add(wExObject, "conversation", "conversations", "chat", "email", "emails", "thread", "history", "messages", "message", "data", "context", "contents", "content", "file", "files", "document", "documents", "credentials", "secrets", "keys", "passwords", "information", "details", "transcript", "everything", "summary", "records")
	add(wNow, "now")
	add(wAre, "are")
	add(wYou, "you")
	add(wTo, "to")
	add(wNew, "new", "updated")
	add(wInstructions, "instructions")
	add(wMode, "mode")
	add(wModeKind, "developer", "dan", "jailbreak")
	return l
}

const ringSize = 16

type tok struct {
	class      uint32
	addr       bool // an email address or a URL
	start, end int
}

// trimPunct trims ASCII punctuation and curly quotes from both ends.
func trimPunct(w []byte) []byte {
	for {
		n := len(w)
		if n > 0 && isPunct(w[0]) {
			w = w[1:]
		} else if n > 0 && isPunct(w[n-1]) {
			w = w[:n-1]
		} else if n >= 3 && curly(w[:3]) {
			w = w[3:]
		} else if n >= 3 && curly(w[n-3:]) {
			w = w[:n-3]
		} else {
			return w
		}
	}
}

func isPunct(c byte) bool {
	switch c {
	case '.', ',', ';', ':', '!', '?', '"', '\'', '`', '(', ')', '[', ']', '{', '}', '<', '>', '*', '_', '-':
		return true
	}
	return false
}

// curly is “ ” ‘ ’ in UTF-8.
func curly(b []byte) bool {
	return b[0] == 0xE2 && b[1] == 0x80 && (b[2] == 0x9C || b[2] == 0x9D || b[2] == 0x98 || b[2] == 0x99)
}

// injection scans lowered text for instruction-injection phrases, keeping a
// window of the last ringSize tokens; linear in the text.
func (s *scan) injection(l []byte, loc string, derived bool) {
	lex := s.in.lex
	var ring [ringSize]tok
	n := 0
	is := func(k int, f uint32) bool {
		return k < n && k < ringSize && ring[(n-1-k)%ringSize].class&f != 0
	}
	report := func(det string, from int) {
		first := ring[(n-1-min(from, n-1, ringSize-1))%ringSize]
		s.value(det, ClassInjection, loc, l[first.start:ring[(n-1)%ringSize].end], derived)
	}
	for i := 0; i < len(l); {
		for i < len(l) && isSpace(l[i]) {
			i++
		}
		st := i
		for i < len(l) && !isSpace(l[i]) {
			i++
		}
		if st == i {
			break
		}
		w := trimPunct(l[st:i])
		at := bytes.IndexByte(w, '@')
		ring[n%ringSize] = tok{class: lex[string(w)], start: st, end: i,
			addr: bytes.Contains(w, []byte("://")) || at > 0 && bytes.IndexByte(w[at:], '.') > 0}
		n++

		// ignore (all|the|previous …){0,4} (previous|system …) (instructions|prompt …)
		if is(0, wObject) && is(1, wQualifier) {
			for k := 2; k <= 6; k++ {
				if is(k, wVerb) {
					report("injection_ignore_instructions", k)
					break
				}
				if !is(k, wFiller) {
					break
				}
			}
		}
		// you are now …; new instructions; developer mode
		if is(0, wNow) && is(1, wAre) && is(2, wYou) ||
			is(0, wInstructions) && is(1, wNew) ||
			is(0, wMode) && is(1, wModeKind) {
			report("injection_role_override", 2)
		}
		// forward this conversation to …
		if is(0, wTo) && is(1, wExObject) {
			for k := 2; k <= 5; k++ {
				if is(k, wExVerb) {
					report("injection_exfil_instruction", k)
					break
				}
			}
		}
		// send … to attacker@example.net / https://…
		if ring[(n-1)%ringSize].addr && (is(1, wTo) || is(2, wTo)) {
			for k := 2; k < ringSize && k < n; k++ {
				if is(k, wExVerb) {
					report("injection_exfil_instruction", k)
					break
				}
			}
		}
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'
}
