package plan

import (
	"encoding/base64"
	"maps"
	"slices"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// check builds CheckRequests the way Envoy sends them: pseudo headers in the
// headers map, the attribute fields mirroring them, and, when there is a body,
// x-envoy-auth-partial-body: false and size = body length.
type check struct {
	ext     map[string]string
	headers map[string]string
	entries []*envoy_config_core_v3.HeaderValue // extra header_map entries
	asMap   bool                                // send header_map instead of headers
	body    []byte
	strBody string
	size    *int64
	noBody  bool // omit the partial-body header even with a body
}

func newCheck() *check {
	return &check{
		ext: map[string]string{
			"tool": "db.read", "tool_class": "read", "base_risk": "0.2",
			"trust": "internal", "cost": "0.01", "route_version": "v1",
		},
		headers: map[string]string{
			":method": "POST", ":path": "/query", ":authority": "db.internal",
			"content-type": "application/json",
		},
	}
}

// mcp makes the request an MCP call to the docs.search server.
func (c *check) mcp() *check {
	c.ext["tool"] = "docs.search"
	c.ext["mcp_tools"] = "search,fetch_page"
	c.headers[":path"] = "/mcp"
	c.headers[":authority"] = "mcp.internal"
	return c
}

func (c *check) llm() *check {
	c.ext["tool"] = "llm.openai"
	c.ext["tool_class"] = "llm"
	return c
}

func (c *check) setExt(k, v string) *check { c.ext[k] = v; return c }
func (c *check) delExt(k string) *check    { delete(c.ext, k); return c }
func (c *check) h(k, v string) *check      { c.headers[k] = v; return c }
func (c *check) del(k string) *check       { delete(c.headers, k); return c }
func (c *check) withBody(s string) *check  { c.body = []byte(s); return c }
func (c *check) rawBody(b []byte) *check   { c.body = b; return c }
func (c *check) stringBody(s string) *check {
	c.strBody = s
	return c
}
func (c *check) withSize(n int64) *check { c.size = &n; return c }

// entry adds a header_map entry (and switches to header_map); raw sends the
// value as raw_value bytes.
func (c *check) entry(k, v string, raw bool) *check {
	c.asMap = true
	e := &envoy_config_core_v3.HeaderValue{Key: k}
	if raw {
		e.RawValue = []byte(v)
	} else {
		e.Value = v
	}
	c.entries = append(c.entries, e)
	return c
}

func (c *check) headerMap() *check { c.asMap = true; return c }

func (c *check) build() *envoy_service_auth_v3.CheckRequest {
	hdrs := maps.Clone(c.headers)
	bodyLen := len(c.body) + len(c.strBody)
	if bodyLen > 0 && !c.noBody {
		if _, ok := hdrs["x-envoy-auth-partial-body"]; !ok {
			hdrs["x-envoy-auth-partial-body"] = "false"
		}
	}
	hr := &envoy_service_auth_v3.AttributeContext_HttpRequest{
		Id:      "req-1",
		Method:  hdrs[":method"],
		Path:    hdrs[":path"],
		Host:    hdrs[":authority"],
		RawBody: c.body,
		Body:    c.strBody,
		Size:    int64(bodyLen),
	}
	if c.size != nil {
		hr.Size = *c.size
	}
	if c.asMap {
		hm := &envoy_config_core_v3.HeaderMap{}
		for _, k := range slices.Sorted(maps.Keys(hdrs)) {
			hm.Headers = append(hm.Headers, &envoy_config_core_v3.HeaderValue{Key: k, Value: hdrs[k]})
		}
		hm.Headers = append(hm.Headers, c.entries...)
		hr.HeaderMap = hm
	} else {
		hr.Headers = hdrs
	}
	return &envoy_service_auth_v3.CheckRequest{
		Attributes: &envoy_service_auth_v3.AttributeContext{
			ContextExtensions: maps.Clone(c.ext),
			Request:           &envoy_service_auth_v3.AttributeContext_Request{Http: hr},
		},
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
