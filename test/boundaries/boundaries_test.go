// Package boundaries keeps the import arrows of design.md pointing one way: cmd may
// import anything; core imports plugins (the interfaces it calls) but no driver,
// conformance suite or main; plugins and the protocols import nothing of berth's
// core; drivers import only the plugin SDK; conformance suites import only the
// protocols, so that they test a driver through its socket or binary and never
// through its Go package.
package boundaries

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// module is berth's module path; packages outside it (the standard library, external
// modules) are never restricted.
const module = "berth.dev/berth"

// mayImport lists, for each top-level folder of the module, the top-level folders
// its packages (tests included) may import. specs/ holds the protocol files and any
// Go generated from them, which every side of a protocol needs. test/ holds the
// integration suites and this test, which may use anything.
var mayImport = map[string][]string{
	"cmd":         {"cmd", "core", "plugins", "drivers", "conformance", "specs"},
	"test":        {"test", "cmd", "core", "plugins", "drivers", "conformance", "specs"},
	"core":        {"core", "plugins", "specs"},
	"plugins":     {"plugins", "specs"},
	"drivers":     {"drivers", "plugins", "specs"},
	"conformance": {"conformance", "specs"},
	"specs":       {"specs"},
}

// area returns the top-level folder of a berth package ("core" for
// berth.dev/berth/core/apiserver), "." for the module root, and "" with ok false
// for a package outside the module.
func area(pkg string) (name string, ok bool) {
	if pkg == module {
		return ".", true
	}
	rest, found := strings.CutPrefix(pkg, module+"/")
	if !found {
		return "", false
	}
	name, _, _ = strings.Cut(rest, "/")
	return name, true
}

// checkImport returns an error when package from may not import package to.
func checkImport(from, to string) error {
	fromArea, ok := area(from)
	if !ok {
		return fmt.Errorf("%s is not a package of %s", from, module)
	}
	allowed, known := mayImport[fromArea]
	if !known {
		return fmt.Errorf("%s is in top-level folder %q, which has no import rule: add one to mayImport in test/boundaries (and to design.md)", from, fromArea)
	}
	toArea, inModule := area(to)
	if !inModule {
		return nil
	}
	if !slices.Contains(allowed, toArea) {
		return fmt.Errorf("%s imports %s: %s/ may import only %s/", from, to, fromArea, strings.Join(allowed, "/, "))
	}
	return nil
}

func TestCheckImport(t *testing.T) {
	const m = module + "/"
	cases := []struct {
		from, to string
		ok       bool
	}{
		// cmd and test may use anything.
		{m + "cmd/berth", m + "core/apiserver", true},
		{m + "cmd/berth", m + "conformance/cri", true},
		{m + "cmd/berth-csi", m + "drivers/csi", true},
		{m + "test/integration", m + "core/storage", true},
		{m + "cmd/berth", "github.com/spf13/cobra", true},
		// core: itself, plugins, specs and external libraries.
		{m + "core/apiserver", m + "core/registry", true},
		{m + "core/scheduler", m + "plugins/scheduling", true},
		{m + "core/scheduler", m + "specs/scheduling/v1", true},
		{m + "core/storage", "go.etcd.io/etcd/client/v3", true},
		{m + "core/agent", m + "drivers/cri", false},
		{m + "core/agent", m + "conformance/cri", false},
		{m + "core/apiserver", m + "cmd/berth", false},
		{m + "core/apiserver", m + "test/integration", false},
		// plugins: never core, drivers, conformance or cmd.
		{m + "plugins/examples/spread", m + "plugins/scheduling", true},
		{m + "plugins/scheduling", m + "core/scheduler", false},
		{m + "plugins/scheduling", m + "drivers/csi", false},
		{m + "plugins/scheduling", m + "conformance/plugins", false},
		{m + "plugins/scheduling", m + "cmd/berth", false},
		// drivers: the plugin SDK only.
		{m + "drivers/csi", m + "plugins/base", true},
		{m + "drivers/cri", "k8s.io/cri-api/pkg/apis/runtime/v1", true},
		{m + "drivers/cni", m + "core/agent", false},
		{m + "drivers/cni", m + "conformance/cni", false},
		{m + "drivers/cni", m + "cmd/berth", false},
		// conformance: the protocols only.
		{m + "conformance/csi", "github.com/container-storage-interface/spec/lib/go/csi", true},
		{m + "conformance/plugins", m + "specs/scheduling/v1", true},
		{m + "conformance/cri", m + "core/agent", false},
		{m + "conformance/plugins", m + "plugins/scheduling", false},
		{m + "conformance/csi", m + "drivers/csi", false},
		{m + "conformance/cri", m + "cmd/berth", false},
		// specs: nothing of berth's but themselves.
		{m + "specs/scheduling/v1", m + "plugins/scheduling", false},
		// A top-level folder without a rule is refused until someone writes one.
		{m + "internal/x", "fmt", false},
		{module, "fmt", false},
	}
	for _, c := range cases {
		err := checkImport(c.from, c.to)
		if (err == nil) != c.ok {
			t.Errorf("checkImport(%s, %s) = %v, want allowed=%v", c.from, c.to, err, c.ok)
		}
	}
}

// listedPackage holds the fields of `go list -json` this test reads.
type listedPackage struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// TestImportBoundaries checks every import of every package of the module, tests
// included, against mayImport.
func TestImportBoundaries(t *testing.T) {
	root := moduleRoot(t)
	// -e: a package that does not compile yet still lists its imports; compiling is
	// another test's job.
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,TestImports,XTestImports", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./... in %s: %v\n%s", root, err, stderr.String())
	}
	pkgs, err := decodePackages(out)
	if err != nil {
		t.Fatalf("decode go list output: %v", err)
	}
	var violations []string
	for _, p := range pkgs {
		for _, imports := range [][]string{p.Imports, p.TestImports, p.XTestImports} {
			for _, imp := range imports {
				if err := checkImport(p.ImportPath, imp); err != nil {
					violations = append(violations, err.Error())
				}
			}
		}
	}
	sort.Strings(violations)
	violations = slices.Compact(violations)
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("checked the imports of %d packages", len(pkgs))
}

// decodePackages reads the stream of JSON objects `go list -json` prints.
func decodePackages(out []byte) ([]listedPackage, error) {
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			return pkgs, nil
		}
		if err != nil {
			return nil, err
		}
		pkgs = append(pkgs, p)
	}
}

// moduleRoot returns the folder of berth's go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == "/dev/null" {
		t.Fatal("not inside a Go module")
	}
	return filepath.Dir(gomod)
}
