package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"berth.dev/berth/conformance/cni"
	"berth.dev/berth/conformance/cri"
	"berth.dev/berth/conformance/csi"
	"berth.dev/berth/conformance/plugin"
)

// errTestsFailed makes the command exit non-zero once the report is out; the lines
// above it already say which tests failed.
var errTestsFailed = errors.New("conformance tests failed")

// newConformanceCommand is `berth conformance`: one subcommand per driver kind, each
// running that kind's suite against one driver through its socket or binary.
func newConformanceCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conformance",
		Short: "Check that a driver (container runtime, CNI plugin, ...) behaves as berth needs",
	}
	cmd.AddCommand(newConformanceCRICommand())
	cmd.AddCommand(newConformanceCNICommand())
	cmd.AddCommand(newConformanceCSICommand())
	cmd.AddCommand(newConformancePluginCommand())
	return cmd
}

// newConformanceCRICommand is `berth conformance cri`.
func newConformanceCRICommand() *cobra.Command {
	var cfg cri.Config
	var sf suiteFlags
	cmd := &cobra.Command{
		Use:   "cri --endpoint unix:///path/to/socket",
		Short: "Run the CRI conformance suite against a container runtime",
		Long: fmt.Sprintf(`Run berth's CRI conformance suite against the container runtime at --endpoint, as
berth's node agent would use it: runtime and image services, pod sandboxes and
containers, idempotent stop and remove, exec, attach, port-forward, logs, host ports,
env, mounts, resources and stats.

The runtime must run on this host and already have the image (%s by default):
no registry is needed. Every sandbox the suite makes is labelled %s=<run ID>
and removed afterwards. One line per test, then "N passed, N failed, N skipped";
the command exits non-zero when a test fails.`, cri.DefaultImage, cri.RunLabel),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if sf.list {
				return listCRITests(out, cfg.Focus, cfg.Skip)
			}
			if cfg.Endpoint == "" {
				return errors.New("--endpoint is required (the runtime's CRI socket, e.g. unix:///run/containerd/containerd.sock)")
			}
			cfg.Output = out
			report, err := cri.Run(cmd.Context(), cfg)
			return finishSuite(sf, report, err)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Endpoint, "endpoint", "", "runtime service endpoint (unix:///path/to/socket)")
	f.StringVar(&cfg.ImageEndpoint, "image-endpoint", "", "image service endpoint (the runtime endpoint when empty)")
	f.StringVar(&cfg.Image, "image", cri.DefaultImage, "image the containers run; it must be present in the runtime")
	f.StringVar(&cfg.RemovableImage, "removable-image", "", "a present image, other than --image, that image/remove may remove (skipped when empty)")
	f.StringVar(&cfg.RuntimeHandler, "runtime-handler", "", "runtime handler (RuntimeClass) of the sandboxes")
	sf.add(f, &cfg.Focus, &cfg.Skip, &cfg.Timeout, cri.DefaultTimeout)
	return cmd
}

// listCRITests prints the names of the selected tests.
func listCRITests(w io.Writer, focus, skip string) error {
	sel, err := cri.NewSelection(focus, skip)
	if err != nil {
		return err
	}
	for _, t := range sel.Filter(cri.Tests()) {
		fmt.Fprintln(w, t.Name)
	}
	return nil
}

// newConformanceCNICommand is `berth conformance cni`.
func newConformanceCNICommand() *cobra.Command {
	var cfg cni.Config
	var sf suiteFlags
	cmd := &cobra.Command{
		Use:   "cni --bin-dir DIR --conf FILE",
		Short: "Run the CNI conformance suite against a CNI plugin or chain",
		Long: fmt.Sprintf(`Run berth's CNI conformance suite against the plugins in --bin-dir configured by
--conf (a .conf with one plugin or a .conflist with a chain): VERSION, ADD's result and
the interfaces, addresses and routes really in the namespace, CHECK, DEL (complete and
idempotent), GC and STATUS (cniVersion 1.1.0 and later), IPAM (no address twice, and
addresses back after DEL) and errors in the spec's format for bad input.

It must run as root: it makes network namespaces (/var/run/netns/%s<run>-<n>) and
removes them, with a DEL of what was added, after each test. The plugins change the
host's network as they would for pods (a bridge, veths, routes): use a configuration
with a subnet and bridge name of its own. One line per test, then "N passed, N failed,
N skipped"; the command exits non-zero when a test fails.`, cni.NamespacePrefix),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if sf.list {
				sel, err := cni.NewSelection(cfg.Focus, cfg.Skip)
				if err != nil {
					return err
				}
				for _, t := range sel.Filter(cni.Tests()) {
					fmt.Fprintln(out, t.Name)
				}
				return nil
			}
			if cfg.BinDir == "" || cfg.ConfFile == "" {
				return errors.New("--bin-dir (the plugin executables) and --conf (the network configuration) are required")
			}
			cfg.Output = out
			report, err := cni.Run(cmd.Context(), cfg)
			return finishSuite(sf, report, err)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.BinDir, "bin-dir", "", "directory of the CNI plugin executables (CNI_PATH)")
	f.StringVar(&cfg.ConfFile, "conf", "", "network configuration file (.conf or .conflist)")
	f.StringVar(&cfg.IfName, "ifname", cni.DefaultIfName, "interface name inside the namespaces")
	f.IntVar(&cfg.IPAMAttachments, "ipam-attachments", cni.DefaultIPAMAttachments, "attachments ipam/unique and ipam/release make at once")
	sf.add(f, &cfg.Focus, &cfg.Skip, &cfg.Timeout, cni.DefaultTimeout)
	return cmd
}

// newConformanceCSICommand is `berth conformance csi`.
func newConformanceCSICommand() *cobra.Command {
	var cfg csi.Config
	var sf suiteFlags
	var size string
	cmd := &cobra.Command{
		Use:   "csi --endpoint unix:///path/to/csi.sock",
		Short: "Run the CSI conformance suite against a CSI driver",
		Long: fmt.Sprintf(`Run berth's CSI conformance suite against the CSI driver at --endpoint, as berth's
agent and sidecars use it: identity and capabilities, CreateVolume and DeleteVolume
(arguments, idempotence, capacity), ListVolumes paging, GetCapacity accounting,
expansion, snapshots and restores, ControllerPublish, and on the node stage, publish,
unpublish and unstage (arguments, idempotence, one mount each, read-only, shared data),
volume stats, node expansion, raw block volumes, deleting a published volume and
concurrent calls. A test of a capability the driver does not declare checks that the
RPC fails and is skipped.

It must run on the driver's node, as root for the node tests. Volumes and snapshots are
named %s<run>-... and everything a test makes is undone after it. One line per test,
then "N passed, N failed, N skipped"; the command exits non-zero when a test fails.`, csi.NamePrefix),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if sf.list {
				ts, err := csi.Select(csi.Tests(), cfg.Focus, cfg.Skip)
				return listTests(out, ts, err, func(t csi.Test) string { return t.Name })
			}
			if cfg.Endpoint == "" {
				return errors.New("--endpoint is required (the driver's CSI socket, e.g. unix:///var/lib/berth/plugins_registry/local.csi.berth.dev.sock)")
			}
			q, err := resource.ParseQuantity(size)
			if err != nil || q.Value() <= 0 {
				return fmt.Errorf("--size %q: want a positive quantity such as 64Mi", size)
			}
			cfg.Size = q.Value()
			cfg.Output = out
			report, err := csi.Run(cmd.Context(), cfg)
			return finishSuite(sf, report, err)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Endpoint, "endpoint", "", "the driver's CSI endpoint (unix:///path/to/csi.sock)")
	f.StringVar(&cfg.StagingDir, "staging-dir", "", "directory for the staging paths (a temporary directory when empty)")
	f.StringVar(&cfg.TargetDir, "target-dir", "", "directory for the target paths (a temporary directory when empty)")
	f.StringToStringVar(&cfg.Parameters, "param", nil, "a CreateVolume parameter k=v (repeatable), as a storage class's parameters")
	f.StringVar(&size, "size", "64Mi", "size of the volumes the suite creates")
	sf.add(f, &cfg.Focus, &cfg.Skip, &cfg.Timeout, csi.DefaultTimeout)
	return cmd
}

// newConformancePluginCommand is `berth conformance plugin`.
func newConformancePluginCommand() *cobra.Command {
	var cfg plugin.Config
	var sf suiteFlags
	var args string
	cmd := &cobra.Command{
		Use:   "plugin --path BIN",
		Short: "Check a scheduler or admission plugin binary against the plugin SDK's contract",
		Long: `Run berth's plugin conformance suite against the plugin executable at --path, launched
as berth's scheduler and API server launch plugins (go-plugin over gRPC). The plugin's
kind, scheduler or admission, is the service that answers PluginInfo. The checks: the
handshake and its protocol version; the name, version and API versions PluginInfo
gives; that the declared extension points (or Mutate/Validate) answer and the others
are refused; that every call answers within --deadline; scores within [0, 100]; the
same answers to the same input; no nodes, empty pods and empty objects answered
without a crash; verdicts and valid patches from admission plugins; and a clean exit
when the host closes the connection.

Each test runs against a process of its own. One line per test, then "N passed, N
failed, N skipped"; the command exits non-zero when a test fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if sf.list {
				ts, err := plugin.Select(plugin.Tests(), cfg.Focus, cfg.Skip)
				return listTests(out, ts, err, func(t plugin.Test) string { return t.Name })
			}
			if cfg.Path == "" {
				return errors.New("--path is required (the plugin's executable, e.g. bin/berth-scheduler-cost)")
			}
			cfg.Args = []byte(args)
			cfg.Output = out
			report, err := plugin.Run(cmd.Context(), cfg)
			return finishSuite(sf, report, err)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Path, "path", "", "the plugin's executable")
	f.StringVar(&args, "args", "", "the plugin's arguments as JSON, passed to Configure (none when empty)")
	f.DurationVar(&cfg.Deadline, "deadline", plugin.DefaultDeadline, "deadline of each call to the plugin")
	sf.add(f, &cfg.Focus, &cfg.Skip, &cfg.Timeout, plugin.DefaultTimeout)
	return cmd
}

// suiteFlags are the flags every conformance command has besides its suite's own.
type suiteFlags struct {
	junit, json string
	list        bool
}

// add adds --focus, --skip, --junit, --json, --timeout (def by default) and --list.
func (sf *suiteFlags) add(f *pflag.FlagSet, focus, skip *string, timeout *time.Duration, def time.Duration) {
	f.StringVar(focus, "focus", "", "run only the tests whose names match this regular expression")
	f.StringVar(skip, "skip", "", "skip the tests whose names match this regular expression")
	f.StringVar(&sf.junit, "junit", "", "write a JUnit XML report to this file")
	f.StringVar(&sf.json, "json", "", "write a JSON report to this file")
	f.DurationVar(timeout, "timeout", def, "timeout of each test")
	f.BoolVar(&sf.list, "list", false, "list the tests --focus and --skip select, and run none")
}

// suiteReport is a suite's report, as the commands use it.
type suiteReport[R any] interface {
	*R
	OK() bool
	WriteFile(path string, write func(*R, io.Writer) error) error
	WriteJUnit(io.Writer) error
	WriteJSON(io.Writer) error
}

// finishSuite writes the reports --junit and --json ask for, and makes the run's outcome
// the command's: the run's error, errTestsFailed when a test failed, or nil.
func finishSuite[R any, P suiteReport[R]](sf suiteFlags, report P, err error) error {
	if report != nil {
		if sf.junit != "" {
			if werr := report.WriteFile(sf.junit, func(r *R, w io.Writer) error { return P(r).WriteJUnit(w) }); werr != nil {
				return werr
			}
		}
		if sf.json != "" {
			if werr := report.WriteFile(sf.json, func(r *R, w io.Writer) error { return P(r).WriteJSON(w) }); werr != nil {
				return werr
			}
		}
	}
	if err != nil {
		return err
	}
	if !report.OK() {
		return errTestsFailed
	}
	return nil
}

// listTests prints the names of the tests a selection returned.
func listTests[T any](w io.Writer, ts []T, err error, name func(T) string) error {
	if err != nil {
		return err
	}
	for _, t := range ts {
		fmt.Fprintln(w, name(t))
	}
	return nil
}
