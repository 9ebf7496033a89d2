package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
)

// newImagesCommand is `berth images`: berth's own images, built offline, and imports of
// image tarballs into a node's containerd, so that an air-gapped site needs no registry.
func newImagesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Build berth's test images offline and import image tarballs into containerd",
	}
	var busybox, testserver string
	build := &cobra.Command{
		Use:   "build DIR",
		Short: "Write the busybox, pause and test server image tarballs into DIR",
		Long: fmt.Sprintf(`Build, without any registry, %s (every applet of Debian's
busybox-static on PATH) and %s (containerd's sandbox image) and write them into DIR as
%s and %s.

When the static berth-testserver binary is found (--testserver; by default $%s, or
%s next to this executable, where make build puts it), also build
%s and %s from it, as %s and %s. Without the binary those two are
skipped, with a note on stderr.`, images.BusyboxRef, images.PauseRef, images.BusyboxFile, images.PauseFile,
			images.TestserverBinaryEnv, images.TestserverBinaryName, images.TestserverRef, images.TestserverRefV2,
			images.TestserverFile(images.TestserverTags[0]), images.TestserverFile(images.TestserverTags[1])),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := images.BuildAll(args[0], busybox)
			if err != nil {
				return err
			}
			bin := testserver
			if bin == "" {
				if bin, err = images.FindTestserver(); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "skipping %s: %v\n", images.TestserverRepo, err)
				}
			}
			if bin != "" {
				more, err := images.BuildTestserver(args[0], bin)
				if err != nil {
					return fmt.Errorf("build %s from %s: %w", images.TestserverRepo, bin, err)
				}
				files = append(files, more...)
			}
			for _, f := range files {
				fmt.Fprintln(cmd.OutOrStdout(), f)
			}
			return nil
		},
	}
	build.Flags().StringVar(&busybox, "busybox", images.DefaultBusyboxPath, "static busybox binary to build from")
	build.Flags().StringVar(&testserver, "testserver", "", "static berth-testserver binary to build the test server image from (default: $"+images.TestserverBinaryEnv+", or "+images.TestserverBinaryName+" next to this executable)")

	var address, namespace string
	imp := &cobra.Command{
		Use:   "import --address SOCK FILE...",
		Short: "Import image tarballs into the containerd at SOCK",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if address == "" {
				return fmt.Errorf("--address is required (the containerd socket, e.g. DATA_DIR/containerd/containerd.sock)")
			}
			for _, f := range args {
				if err := images.Import(cmd.Context(), address, namespace, f); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "imported %s\n", f)
			}
			return nil
		},
	}
	imp.Flags().StringVar(&address, "address", "", "containerd's gRPC socket")
	imp.Flags().StringVar(&namespace, "namespace", containerd.Namespace, "containerd namespace (the CRI plugin's is k8s.io)")
	cmd.AddCommand(build, imp)
	return cmd
}
