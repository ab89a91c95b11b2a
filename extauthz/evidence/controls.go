package evidence

import (
	_ "embed"
	"fmt"
	"regexp"
	"strings"
)

// Control is one row of the specification's section 16 control matrix.
type Control struct {
	ID          string `json:"id"`
	Objective   string `json:"objective"`
	Layer       string `json:"layer"`
	Mandatory   string `json:"mandatory"` // MUST, SHOULD or MAY
	Description string `json:"description"`
}

//go:embed section16.txt
var section16 string

// controlRow reads a matrix row as the v1.0 text lays it out: id, objective,
// enforcement layer, obligation, description, separated by single spaces.
var controlRow = regexp.MustCompile(`^(AIS-[A-Z]+-[0-9]{2}) (.+?) (Layer [0-9]|Cross-Layer|Control Plane|Governance) (MUST|SHOULD|MAY) (.+)$`)

// ParseMatrix reads the control rows out of the section 16 text.
func ParseMatrix(text string) ([]Control, error) {
	var out []Control
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "AIS-") {
			continue
		}
		m := controlRow.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("evidence: control matrix row not understood: %q", line)
		}
		out = append(out, Control{ID: m[1], Objective: m[2], Layer: m[3], Mandatory: m[4], Description: m[5]})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("evidence: no control matrix rows")
	}
	return out, nil
}

// Controls is the specification's control matrix, every control in its order.
func Controls() []Control {
	c, err := ParseMatrix(section16)
	if err != nil {
		panic(err) // the embedded file is tested
	}
	return c
}
