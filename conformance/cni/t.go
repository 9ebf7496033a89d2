package cni

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"berth.dev/berth/conformance/internal/harness"
)

// T is what a test gets: harness.T's testing.T-like reporting calls (Errorf records a
// failure and goes on, Fatalf and Skipf end the test, Cleanup registers what runs after
// it, last registered first), the run's configuration and network, and the CNI verbs on
// attachments of the suite's own.
type T struct {
	*harness.T
	suite *suite
}

// Config is the run's configuration, defaults filled in.
func (t *T) Config() Config { return t.suite.cfg }

// Network is the network configuration under test, as a list.
func (t *T) Network() *libcni.NetworkConfigList { return t.suite.list }

// Attachment is one container's attachment to the network: a namespace of the suite's
// and, once added, the result ADD returned.
type Attachment struct {
	// ID is the container ID, also the namespace's name.
	ID string
	// NetNS is the namespace's path (/var/run/netns/ID).
	NetNS string
	// IfName is the interface in the namespace.
	IfName string
	// Result is ADD's result, nil before ADD.
	Result types.Result

	added, deleted bool
}

// runtimeConf is what libcni passes the plugins for a.
func (a *Attachment) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: a.ID, NetNS: a.NetNS, IfName: a.IfName}
}

// NewAttachment makes a namespace, removed after the test with a DEL of whatever was
// added to it.
func (t *T) NewAttachment() *Attachment {
	s := t.suite
	s.seq++
	id := fmt.Sprintf("%s%d", s.nsPrefix(), s.seq)
	path, err := newNetNS(id)
	if err != nil {
		t.Fatalf("%v", err)
	}
	a := &Attachment{ID: id, NetNS: path, IfName: s.cfg.IfName}
	t.Cleanup(func(ctx context.Context) {
		if a.added && !a.deleted {
			if err := s.cni.DelNetworkList(ctx, s.list, a.runtimeConf()); err != nil {
				t.Logf("cleanup: DEL %s: %v", a.ID, err)
			}
		}
		if err := deleteNetNS(id); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return a
}

// Add runs ADD for a and keeps the result.
func (t *T) Add(ctx context.Context, a *Attachment) (types.Result, error) {
	res, err := t.suite.cni.AddNetworkList(ctx, t.suite.list, a.runtimeConf())
	// A failed ADD may have left something: the cleanup's DEL is what the runtime
	// would do.
	a.added = true
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", a.ID, err)
	}
	a.Result = res
	return res, nil
}

// MustAdd runs ADD for a new attachment and ends the test when it fails.
func (t *T) MustAdd(ctx context.Context) *Attachment {
	a := t.NewAttachment()
	if _, err := t.Add(ctx, a); err != nil {
		t.Fatalf("%v", err)
	}
	return a
}

// Check runs CHECK for a (with ADD's cached result as prevResult, as libcni does).
func (t *T) Check(ctx context.Context, a *Attachment) error {
	if err := t.suite.cni.CheckNetworkList(ctx, t.suite.list, a.runtimeConf()); err != nil {
		return fmt.Errorf("CHECK %s: %w", a.ID, err)
	}
	return nil
}

// Del runs DEL for a.
func (t *T) Del(ctx context.Context, a *Attachment) error {
	err := t.suite.cni.DelNetworkList(ctx, t.suite.list, a.runtimeConf())
	if err != nil {
		return fmt.Errorf("DEL %s: %w", a.ID, err)
	}
	a.deleted = true
	return nil
}
