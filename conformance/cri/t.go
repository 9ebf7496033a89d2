package cri

import (
	"context"
	"os"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/conformance/internal/harness"
)

// T is what a test gets: harness.T's testing.T-like reporting calls (Errorf records a
// failure and goes on, Fatalf and Skipf end the test, Cleanup registers what runs after
// it, last registered first), the runtime's clients and the run's configuration.
type T struct {
	*harness.T
	suite *suite
}

// Runtime is the runtime service client.
func (t *T) Runtime() runtimeapi.RuntimeServiceClient { return t.suite.runtime }

// Images is the image service client.
func (t *T) Images() runtimeapi.ImageServiceClient { return t.suite.images }

// Config is the run's configuration, defaults filled in.
func (t *T) Config() Config { return t.suite.cfg }

// TempDir makes a directory that is removed after the test.
func (t *T) TempDir() string {
	dir, err := tempDir("berth-cri-conformance-")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func(context.Context) {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return dir
}

// labelValue turns a test name into a label value ("runtime/version" -> "runtime-version").
func labelValue(name string) string {
	return strings.NewReplacer("/", "-", "_", "-").Replace(name)
}
