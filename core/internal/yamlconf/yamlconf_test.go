package yamlconf

import (
	"strings"
	"testing"
)

func TestDocumentAndFieldsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"empty", "", "f.yaml:1: empty file, want a K of apiVersion a/v1"},
		{"two documents", "a: 1\n---\nb: 2\n", "f.yaml:2: a second YAML document: the file holds one K"},
		{"unknown field", "apiVersion: a/v1\nkindd: K\n", `f.yaml:2: unknown field "kindd" in the file (known: apiVersion, kind)`},
		{"twice", "kind: K\nkind: K\n", `f.yaml:2: field "kind" given twice in the file`},
		{"not a mapping", "- a\n", "f.yaml:1: the file: want a mapping, got a list"},
	} {
		root, err := Document("f.yaml", []byte(tc.data), "K", "a/v1")
		if err == nil {
			d := &Decoder{File: "f.yaml"}
			_, err = d.Fields(root, "the file", "apiVersion", "kind")
		}
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestStrRefusesNonStrings(t *testing.T) {
	root, err := Document("f.yaml", []byte("a: [1]\nb: ~\nc: x\n"), "K", "a/v1")
	if err != nil {
		t.Fatal(err)
	}
	d := &Decoder{File: "f.yaml"}
	fs, err := d.Fields(root, "the file", "a", "b", "c")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Str(fs["a"].Value, "a"); err == nil || !strings.Contains(err.Error(), "f.yaml:1: a: want a string, got a list") {
		t.Errorf("a list: err = %v", err)
	}
	if _, err := d.Str(fs["b"].Value, "b"); err == nil || !strings.Contains(err.Error(), "got nothing") {
		t.Errorf("null: err = %v", err)
	}
	if s, err := d.Str(fs["c"].Value, "c"); err != nil || s != "x" {
		t.Errorf("c = %q, %v", s, err)
	}
}
