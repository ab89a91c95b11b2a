package suite

import _ "embed"

//go:embed threats.yaml
var threatsYAML []byte

// ThreatsName is the shipped threat-regression suite's name in messages.
const ThreatsName = "threats.yaml (shipped)"

// Threats returns the shipped threat-regression suite: the specification's
// five threat classes (section 3) and its worked example (section 8).
func Threats() (*Suite, error) { return Parse(ThreatsName, threatsYAML) }
