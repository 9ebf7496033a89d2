// Package yamlconf is what berth's configuration files share (the scheduler's
// SchedulerConfiguration, the API server's AdmissionConfiguration): one YAML document
// decoded node by node, so that every error names FILE:LINE and every unknown field is
// refused.
package yamlconf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Document reads the one YAML document of a configuration file of kind at apiVersion and
// returns its root node. file names the file in errors.
func Document(file string, data []byte, kind, apiVersion string) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s:1: empty file, want a %s of apiVersion %s", file, kind, apiVersion)
		}
		return nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s:%d: a second YAML document: the file holds one %s", file, extra.Line, kind)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	return root, nil
}

// Decoder walks a file's nodes; File names it in errors, Dir resolves relative paths.
type Decoder struct {
	File, Dir string
}

// Errf is an error at n's line: "FILE:LINE: message".
func (d *Decoder) Errf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", d.File, n.Line, fmt.Sprintf(format, args...))
}

// Field is one key of a mapping and its value.
type Field struct{ Key, Value *yaml.Node }

// Fields checks that n is a mapping with only the allowed keys, each at most once.
func (d *Decoder) Fields(n *yaml.Node, what string, allowed ...string) (map[string]Field, error) {
	if n.Kind != yaml.MappingNode {
		return nil, d.Errf(n, "%s: want a mapping, got %s", what, KindName(n))
	}
	out := map[string]Field{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.Contains(allowed, k.Value) {
			return nil, d.Errf(k, "unknown field %q in %s (known: %s)", k.Value, what, strings.Join(allowed, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, d.Errf(k, "field %q given twice in %s", k.Value, what)
		}
		out[k.Value] = Field{k, v}
	}
	return out, nil
}

// KindName says what a node is, for errors.
func KindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}

// IsNull tells whether n is YAML's null (an empty value).
func IsNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// Str reads a string scalar.
func (d *Decoder) Str(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode || IsNull(n) || n.Tag == "!!map" || n.Tag == "!!seq" {
		return "", d.Errf(n, "%s: want a string, got %s", what, KindName(n))
	}
	return n.Value, nil
}
