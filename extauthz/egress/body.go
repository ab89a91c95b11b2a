package egress

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"sort"
	"strconv"
	"strings"
)

// ratioFloor is the decompressed size below which the ratio cap is not
// applied: small, highly repetitive JSON legitimately compresses very well.
const ratioFloor = 1 << 20

// decodeBody undoes the declared Content-Encoding. A body whose declared
// encoding cannot be undone within the caps is an error, never a partial
// inspection: what we did not read could hold anything. (We chose deny over
// "inspect up to the cap and report size": an allow with a size finding would
// let a policy wave on bytes nobody looked at.)
//
// A body that starts with the gzip magic without declaring it is inspected
// both as sent and decompressed (an upstream may sniff it); failing to
// decompress it there is only a size finding, since it may be an ordinary
// .gz upload.
func (s *scan) decodeBody(b []byte, contentEncoding string) ([]byte, error) {
	var codings []string
	for _, c := range strings.Split(contentEncoding, ",") {
		c = strings.ToLower(strings.TrimSpace(c))
		if c != "" && c != "identity" {
			codings = append(codings, c)
		}
	}
	if len(codings) > 2 {
		return nil, errEncoding
	}
	for i := len(codings) - 1; i >= 0; i-- {
		var err error
		switch codings[i] {
		case "gzip", "x-gzip":
			b, err = s.inflate(b, "gzip")
		case "deflate":
			b, err = s.inflate(b, "deflate")
		default:
			return nil, errEncoding
		}
		if err != nil {
			return nil, err
		}
	}
	if len(codings) == 0 && len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		d, err := s.inflate(b, "gzip")
		if err != nil {
			s.shape("undeclared_compression", ClassSize, "body")
		} else {
			s.sniffed = d
		}
	}
	return b, nil
}

// inflate decompresses with an absolute cap and a ratio cap, reading as a
// stream so a bomb never exists in memory beyond the cap.
func (s *scan) inflate(b []byte, kind string) ([]byte, error) {
	var r io.Reader
	switch kind {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, errCorrupt
		}
		r = zr
	default:
		// HTTP's "deflate" is zlib-wrapped; some clients send raw deflate.
		if zr, err := zlib.NewReader(bytes.NewReader(b)); err == nil {
			r = zr
		} else {
			r = flate.NewReader(bytes.NewReader(b))
		}
	}
	limit := s.in.lim.MaxDecompressedBytes
	ratio := s.in.lim.MaxCompressionRatio
	var out bytes.Buffer
	buf := make([]byte, 32<<10)
	for {
		if err := s.canceled(); err != nil {
			return nil, err
		}
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if out.Len() > limit {
			return nil, errDecompressed
		}
		if out.Len() > ratioFloor && out.Len() > ratio*len(b) {
			return nil, errRatio
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, errCorrupt
		}
	}
	if err := s.charge(out.Len()); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func multipartBoundary(contentType string) (string, bool) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return "", false
	}
	return params["boundary"], true
}

// maxMultipartNesting bounds multipart inside multipart.
const maxMultipartNesting = 3

// multipart inspects every part, its headers and its content (transfer
// encoding undone). A body declared multipart that does not parse is an
// error: the upstream's parser may see parts ours did not.
func (s *scan) multipart(b []byte, boundary, loc string, m mask, nest int) error {
	if nest >= maxMultipartNesting {
		return errMultipart
	}
	mr := multipart.NewReader(bytes.NewReader(b), boundary)
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil || i >= s.in.lim.MaxParts {
			return errMultipart
		}
		ploc := loc + ".part[" + strconv.Itoa(i) + "]"
		keys := make([]string, 0, len(p.Header))
		for k := range p.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range p.Header[k] {
				if err := s.text([]byte(k+": "+v), ploc+".header", 0, m&^mURL, false); err != nil {
					return err
				}
			}
		}
		content, err := io.ReadAll(p)
		if err != nil {
			return errMultipart
		}
		switch strings.ToLower(strings.TrimSpace(p.Header.Get("Content-Transfer-Encoding"))) {
		case "base64":
			// The encoded form is scanned too, as the raw body (derived).
			content = decodeB64(nil, content)
		case "quoted-printable":
			if d, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(content))); err == nil {
				content = d
			}
		}
		if err := s.body(content, p.Header.Get("Content-Type"), ploc, m, nest+1); err != nil {
			return err
		}
	}
}
