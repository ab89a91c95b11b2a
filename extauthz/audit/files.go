package audit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// rotatedSuffix matches what rotatedName appends: .<UTC time>[-n].
var rotatedSuffix = regexp.MustCompile(`^\.([0-9]{8}T[0-9]{6}\.[0-9]{9}Z)(?:-([0-9]{1,9}))?$`)

// LogFiles lists the files of the log at path as VerifyFiles takes them,
// oldest first: its rotated files (PATH.<UTC time>, as rotation names them)
// and then PATH itself. Sidecars and other files beside it are not listed.
func LogFiles(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list %s: %w", path, err)
	}
	type rotated struct {
		name, ts string
		n        int
	}
	var old []rotated
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), base)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		m := rotatedSuffix.FindStringSubmatch(rest)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		old = append(old, rotated{name: e.Name(), ts: m[1], n: n})
	}
	sort.Slice(old, func(i, j int) bool {
		if old[i].ts != old[j].ts {
			return old[i].ts < old[j].ts
		}
		return old[i].n < old[j].n
	})
	out := make([]string, 0, len(old)+1)
	for _, r := range old {
		out = append(out, filepath.Join(dir, r.name))
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	} else if !errors.Is(err, os.ErrNotExist) || len(out) == 0 {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return out, nil
}
