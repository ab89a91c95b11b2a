package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

var rotatedSuffix = regexp.MustCompile(`^\.[0-9]{8}T[0-9]{6}\.[0-9]{9}Z(-[0-9]+)?$`)

// Files lists a log's files oldest first: its rotated files (PATH.<UTC
// time>, Rotate), then PATH itself when it exists. Sidecars and other files
// beside it are not listed.
func Files(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list log files: %w", err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if len(name) > len(base) && name[:len(base)] == base && rotatedSuffix.MatchString(name[len(base):]) && e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, name))
		}
	}
	slices.Sort(out)
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return out, nil
}

// ErrTooMany: a range holds more records than asked for.
var ErrTooMany = errors.New("audit: more records in the range than the limit")

// ReadRange reads the records of the log at path (its rotated files
// included) with from <= ts < to (a zero bound is open), oldest first, the
// log's own header and checkpoint lines skipped. It returns ErrTooMany, with
// the first limit records, when the range holds more than limit. It does not
// verify the chain (Verify does).
func ReadRange(path string, from, to time.Time, limit int) ([]Record, error) {
	files, err := Files(path)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, f := range files {
		if err := readRange(f, from, to, limit, &out); err != nil {
			return out, err
		}
	}
	return out, nil
}

func readRange(path string, from, to time.Time, limit int, out *[]Record) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			// A last line without its newline is a write in progress (or
			// torn by a crash, never acknowledged): not a record yet.
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: %s: %w", filepath.Base(path), err)
		}
		if len(line) > MaxLineBytes+1 {
			return fmt.Errorf("audit: %s line %d: longer than %d bytes", filepath.Base(path), n, MaxLineBytes)
		}
		var head struct {
			TS    time.Time `json:"ts"`
			Event string    `json:"event"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			return fmt.Errorf("audit: %s line %d: %w", filepath.Base(path), n, err)
		}
		if isControl(head.Event) || (!from.IsZero() && head.TS.Before(from)) || (!to.IsZero() && !head.TS.Before(to)) {
			continue
		}
		if len(*out) == limit {
			return ErrTooMany
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("audit: %s line %d: %w", filepath.Base(path), n, err)
		}
		*out = append(*out, r)
	}
}
