package plan

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/url"
	"strings"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// FieldKind is the type of a Field's value.
type FieldKind uint8

// Field kinds.
const (
	FieldString FieldKind = iota + 1
	FieldNumber
	FieldOther // null, boolean, object or array
)

// Field is one named value an upstream may read from the request: a JSON
// member at any depth of the body (plan, MCP or tool-native), a query
// parameter, or a field of a form body.
type Field struct {
	Where string // "body", "query" or "form"
	Name  string // the name as written
	Key   string // the name's last component ("limit" of "page[limit]"), as written
	Kind  FieldKind
	Text  string // a string's contents or a number's literal
}

// maxFormParts bounds the parts of a multipart body Fields reads.
const maxFormParts = 256

// Fields calls fn for every named value of the request whose name matches one
// of names. A name matches when its last component ("limit" of "limit",
// "page[limit]" or "filter.limit") equals one of names under Unicode case
// folding, because upstreams match keys case-insensitively (Go's encoding/json
// does) and frameworks nest query and form keys with brackets or dots.
//
// A query or form body that does not parse unambiguously is an error
// (bad_request): its values could not be attributed, so nothing bounded by
// them can be allowed. fn's error stops the walk and is returned.
func (p *Plan) Fields(names []string, fn func(Field) error) error {
	match := func(name string) bool {
		last := lastComponent(name)
		for _, n := range names {
			if strings.EqualFold(last, n) {
				return true
			}
		}
		return false
	}
	if p.doc != nil {
		if err := walkFields(p.doc, match, fn); err != nil {
			return err
		}
	}
	if p.Query != "" {
		if err := formFields("query", p.Query, match, fn); err != nil {
			return err
		}
	}
	mt, params, _ := mime.ParseMediaType(p.ContentType)
	switch {
	case len(p.Body) == 0 || p.doc != nil:
	case mt == "application/x-www-form-urlencoded":
		return formFields("form", string(p.Body), match, fn)
	case strings.HasPrefix(mt, "multipart/"):
		return multipartFields(p.Body, params["boundary"], match, fn)
	}
	return nil
}

// lastComponent is the innermost key of a bracketed or dotted name.
func lastComponent(name string) string {
	parts := strings.FieldsFunc(name, func(r rune) bool { return r == '.' || r == '[' || r == ']' })
	if len(parts) == 0 {
		return name
	}
	return parts[len(parts)-1]
}

func walkFields(v *value, match func(string) bool, fn func(Field) error) error {
	switch v.kind {
	case kindObject:
		for i := range v.members {
			m := &v.members[i]
			if match(m.key) {
				f := Field{Where: "body", Name: m.key, Key: lastComponent(m.key), Kind: FieldOther}
				switch m.val.kind {
				case kindString:
					f.Kind, f.Text = FieldString, m.val.str
				case kindNumber:
					f.Kind, f.Text = FieldNumber, m.val.str
				}
				if err := fn(f); err != nil {
					return err
				}
			}
			if err := walkFields(&m.val, match, fn); err != nil {
				return err
			}
		}
	case kindArray:
		for i := range v.elems {
			if err := walkFields(&v.elems[i], match, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// formFields reads an application/x-www-form-urlencoded string (a query or a
// form body). Go's parser refuses ';' separators and bad escapes; other
// parsers split or decode them differently, so such input is refused here.
func formFields(where, s string, match func(string) bool, fn func(Field) error) error {
	vals, err := url.ParseQuery(s)
	if err != nil {
		return reason.New(reason.BadRequest, "the %s cannot be read unambiguously", where)
	}
	for name, vs := range vals {
		if !match(name) {
			continue
		}
		for _, v := range vs {
			if err := fn(Field{Where: where, Name: name, Key: lastComponent(name), Kind: FieldString, Text: v}); err != nil {
				return err
			}
		}
	}
	return nil
}

// multipartFields reads the text fields of a multipart form body.
func multipartFields(body []byte, boundary string, match func(string) bool, fn func(Field) error) error {
	bad := reason.New(reason.BadRequest, "the multipart body cannot be read unambiguously")
	if boundary == "" {
		return bad
	}
	r := multipart.NewReader(bytes.NewReader(body), boundary)
	for n := 0; ; n++ {
		part, err := r.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil || n >= maxFormParts {
			return bad
		}
		name := part.FormName()
		if name == "" || !match(name) {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(part, int64(len(body))))
		if err != nil {
			return bad
		}
		if err := fn(Field{Where: "form", Name: name, Key: lastComponent(name), Kind: FieldString, Text: string(data)}); err != nil {
			return err
		}
	}
}
