package agent

// The glue between the pods' workers and the CSI manager (core/agent/csi), which sets
// up persistentVolumeClaim, ephemeral and csi volumes and reports their stats.

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/core/agent/csi"
)

// setUpCSIVolume sets up a volume the CSI manager handles. A claim bound to a hostPath
// PV is the host's path, checked as a hostPath volume is.
func (a *Agent) setUpCSIVolume(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (mountedVolume, bool, error) {
	if a.csi == nil {
		return mountedVolume{}, false, fmt.Errorf("berth's agent does not support %s volumes without its CSI manager", volumeType(&v.VolumeSource))
	}
	m, err := a.csi.SetUp(ctx, pod, v)
	if err != nil {
		return mountedVolume{}, false, err
	}
	if m.HostPath {
		if err := checkHostPath(m.Path, m.HostPathType); err != nil {
			return mountedVolume{}, false, err
		}
	}
	return mountedVolume{hostPath: m.Path, readOnly: m.ReadOnly, block: m.Block}, false, nil
}

// csiFailureMessage is the FailedMount text of a CSI volume's failure, which carries the
// kubelet's operation and the PV's name itself.
func csiFailureMessage(err error) (string, bool) {
	var me *csi.MountError
	if errors.As(err, &me) {
		return me.Error(), true
	}
	return "", false
}

// tearDownCSIVolumes unpublishes (and unstages) the pod's CSI volumes, before anything
// else of its directory is unmounted.
func (a *Agent) tearDownCSIVolumes(ctx context.Context, uid types.UID) error {
	if a.csi == nil {
		return nil
	}
	return a.csi.TearDownPod(ctx, uid)
}

// containerDevices is the CRI devices of c's volumeDevices: the block volumes published
// for the pod, at the container's devicePath.
func containerDevices(c *corev1.Container, vols podVolumes) ([]*runtimeapi.Device, error) {
	var out []*runtimeapi.Device
	for _, vd := range c.VolumeDevices {
		v, ok := vols[vd.Name]
		if !ok {
			return nil, configErrorf("cannot find volume %q to pass into container %q", vd.Name, c.Name)
		}
		if !v.block {
			return nil, configErrorf("volume %q has volumeMode Filesystem, but is specified in volumeDevices", vd.Name)
		}
		// "mrw" whatever readOnly says, as the kubelet passes block volumes.
		out = append(out, &runtimeapi.Device{ContainerPath: vd.DevicePath, HostPath: v.hostPath, Permissions: "mrw"})
	}
	return out, nil
}

// serveStatsSummary answers /stats/summary from the CSI manager (empty before it runs).
func (a *Agent) serveStatsSummary(w http.ResponseWriter, r *http.Request) {
	if a.csi == nil {
		http.Error(w, "stats are not collected yet", http.StatusServiceUnavailable)
		return
	}
	a.csi.ServeSummary(w, r)
}

// csiVolumesInUse is node.status.volumesInUse.
func (a *Agent) csiVolumesInUse() []corev1.UniqueVolumeName {
	if a.csi == nil {
		return nil
	}
	return a.csi.VolumesInUse()
}
