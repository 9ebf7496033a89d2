package plugin

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/conformance/internal/harness"
	admissionv1 "berth.dev/berth/specs/admission/v1"
	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// T is what a test gets: the harness's reporting calls (Errorf, Fatalf, Skipf, Logf,
// Cleanup), what the plugin declared, and helpers that start a process of it for the
// test and time each call.
type T struct {
	*harness.T
	s *suite
}

// Config is the run's configuration, defaults filled in.
func (t *T) Config() Config { return t.s.cfg }

// requirePlugin fails the test when no process of the plugin could be started.
func (t *T) requirePlugin() {
	if t.s.launchErr != nil {
		// handshake/protocol carries the whole story; the others only say they could
		// not run (and fail, so that a focused run on a non-plugin does not pass).
		if t.Name() == "handshake/protocol" {
			t.Fatalf("the plugin did not start: %v", t.s.launchErr)
		}
		t.Fatalf("the plugin did not start (see handshake/protocol)")
	}
}

// requireKind skips the test unless the plugin is of kind k.
func (t *T) requireKind(k Kind) {
	t.requirePlugin()
	if t.s.kind != k {
		t.Skipf("not a check for %s plugins", t.s.kind)
	}
}

// declares reports whether the scheduler plugin declared pt.
func (t *T) declares(pt schedulerv1.ExtensionPoint) bool {
	for _, x := range t.s.sched.GetExtensionPoints() {
		if x == pt {
			return true
		}
	}
	return false
}

// start launches a process of the plugin for this test, killed after it, and configures
// it as a host would: Configure with the run's args and, for a scheduler plugin, a full
// SyncNodes of nodes at generation 1.
func (t *T) start(ctx context.Context, nodes []*corev1.Node) *session {
	t.requirePlugin()
	sess, err := t.s.launch(ctx)
	if err != nil {
		t.Fatalf("start the plugin: %v", err)
	}
	t.Cleanup(func(context.Context) { sess.kill() })
	switch sess.kind {
	case Scheduler:
		err := t.call(ctx, "Configure", func(ctx context.Context) error {
			_, err := sess.sched.Configure(ctx, &schedulerv1.ConfigureRequest{ApiVersion: APIVersion, Args: t.s.cfg.Args})
			return err
		})
		if err != nil {
			t.Fatalf("Configure (api_version %s, args %q): %v", APIVersion, t.s.cfg.Args, err)
		}
		t.syncNodes(ctx, sess, 1, nodes)
	case Admission:
		err := t.call(ctx, "Configure", func(ctx context.Context) error {
			_, err := sess.adm.Configure(ctx, &admissionv1.ConfigureRequest{ApiVersion: APIVersion, Args: t.s.cfg.Args})
			return err
		})
		if err != nil {
			t.Fatalf("Configure (api_version %s, args %q): %v", APIVersion, t.s.cfg.Args, err)
		}
	}
	return sess
}

// syncNodes replaces the plugin's nodes with nodes at generation gen.
func (t *T) syncNodes(ctx context.Context, sess *session, gen int64, nodes []*corev1.Node) {
	req := &schedulerv1.SyncNodesRequest{Generation: gen, Full: true}
	for _, n := range nodes {
		b, err := n.Marshal()
		if err != nil {
			t.Fatalf("encode node %s: %v", n.Name, err)
		}
		req.Nodes = append(req.Nodes, b)
	}
	var resp *schedulerv1.SyncNodesResponse
	err := t.call(ctx, "SyncNodes", func(ctx context.Context) (err error) {
		resp, err = sess.sched.SyncNodes(ctx, req)
		return err
	})
	if err != nil {
		t.Fatalf("SyncNodes (full, %d nodes, generation %d): %v", len(nodes), gen, err)
	}
	if resp.GetGeneration() != gen {
		t.Fatalf("SyncNodes to generation %d answered generation %d", gen, resp.GetGeneration())
	}
}

// errDeadline is a call that did not answer within the deadline.
type errDeadline struct {
	what     string
	took     time.Duration
	deadline time.Duration
}

func (e errDeadline) Error() string {
	return fmt.Sprintf("%s did not answer within the %s deadline (gave up after %s)", e.what, e.deadline, e.took.Round(time.Millisecond))
}

// call runs one RPC under the per-call deadline. A call that misses it is recorded for
// the deadlines test and returns errDeadline.
func (t *T) call(ctx context.Context, what string, f func(ctx context.Context) error) error {
	d := t.s.cfg.Deadline
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	err := f(cctx)
	took := time.Since(start)
	if status.Code(err) == codes.DeadlineExceeded || (err == nil && took > d) {
		t.s.missed(fmt.Sprintf("%s (%s)", what, t.Name()))
		return errDeadline{what: what, took: took, deadline: d}
	}
	return err
}

// alive fails the test when the plugin's process has exited or no longer answers
// PluginInfo, after what.
func (t *T) alive(ctx context.Context, sess *session, what string) {
	if sess.client.Exited() {
		t.Fatalf("the plugin exited after %s\nplugin's log:\n%s", what, sess.logs.tail())
	}
	err := t.call(ctx, "PluginInfo", func(ctx context.Context) error {
		var err error
		if sess.kind == Scheduler {
			_, err = sess.sched.PluginInfo(ctx, &schedulerv1.PluginInfoRequest{HostApiVersions: []string{APIVersion}})
		} else {
			_, err = sess.adm.PluginInfo(ctx, &admissionv1.PluginInfoRequest{HostApiVersions: []string{APIVersion}})
		}
		return err
	})
	if err != nil {
		t.Fatalf("the plugin no longer answers PluginInfo after %s: %v\nplugin's log:\n%s", what, err, sess.logs.tail())
	}
}
