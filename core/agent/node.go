package agent

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
)

// maxPods is the kubelet's default pod capacity.
const maxPods = 110

// leaseDuration is the kubelet's node Lease duration: four missed renewals.
const leaseDuration = 40 * time.Second

// nodeCapacity is what the host has: CPUs, memory, the data dir's file system, pods.
func (a *Agent) nodeCapacity() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory:           *resource.NewQuantity(memoryBytes(), resource.BinarySI),
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(diskBytes(a.cfg.DataDir), resource.BinarySI),
		corev1.ResourcePods:             *resource.NewQuantity(maxPods, resource.DecimalSI),
	}
}

func (a *Agent) nodeInfo() corev1.NodeSystemInfo {
	return corev1.NodeSystemInfo{
		MachineID:               readTrimmed("/etc/machine-id"),
		BootID:                  readTrimmed("/proc/sys/kernel/random/boot_id"),
		KernelVersion:           readTrimmed("/proc/sys/kernel/osrelease"),
		OSImage:                 osImage(),
		ContainerRuntimeVersion: a.runtimeName + "://" + a.runtimeVersion,
		KubeletVersion:          KubeletVersion,
		OperatingSystem:         runtime.GOOS,
		Architecture:            runtime.GOARCH,
	}
}

func (a *Agent) nodeAddresses() []corev1.NodeAddress {
	host, _ := os.Hostname()
	addrs := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: a.hostIP}}
	if host != "" {
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeHostName, Address: host})
	}
	return addrs
}

// readyCondition asks the runtime for its Status: the node is Ready while the runtime and
// its network are, with the kubelet's reasons and messages.
func (a *Agent) readyCondition(ctx context.Context) corev1.NodeCondition {
	cond := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", Message: "kubelet is posting ready status"}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := a.runtime.Status(cctx, &runtimeapi.StatusRequest{})
	if err != nil {
		cond.Status, cond.Reason = corev1.ConditionFalse, "KubeletNotReady"
		cond.Message = fmt.Sprintf("container runtime is down: %v", err)
		return cond
	}
	for _, c := range st.GetStatus().GetConditions() {
		if c.Status {
			continue
		}
		cond.Status, cond.Reason = corev1.ConditionFalse, "KubeletNotReady"
		what := "container runtime is not ready"
		if c.Type == runtimeapi.NetworkReady {
			what = "container runtime network not ready"
		}
		cond.Message = fmt.Sprintf("%s: %s=false reason:%s message:%s", what, c.Type, c.Reason, c.Message)
		break
	}
	return cond
}

// nodeConditions are Ready from the runtime and the pressure conditions, which the agent
// does not measure yet and reports as absent.
func (a *Agent) nodeConditions(ctx context.Context, old []corev1.NodeCondition) []corev1.NodeCondition {
	now := metav1.NewTime(a.now()).Rfc3339Copy()
	want := []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
		a.readyCondition(ctx),
	}
	prev := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, c := range old {
		prev[c.Type] = c
	}
	for i := range want {
		want[i].LastHeartbeatTime = now
		want[i].LastTransitionTime = now
		if p, ok := prev[want[i].Type]; ok && p.Status == want[i].Status {
			want[i].LastTransitionTime = p.LastTransitionTime
		}
		delete(prev, want[i].Type)
	}
	// Conditions others own (NetworkUnavailable, say) stay.
	for _, c := range old {
		if _, ok := prev[c.Type]; ok {
			want = append(want, c)
		}
	}
	return want
}

// registerNode creates the Node, or takes over the one of the same name left by an
// earlier run, and posts its first status.
func (a *Agent) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: a.cfg.NodeName,
			Labels: map[string]string{
				corev1.LabelHostname:   a.cfg.NodeName,
				corev1.LabelOSStable:   runtime.GOOS,
				corev1.LabelArchStable: runtime.GOARCH,
			},
		},
	}
	if a.cfg.PodCIDR != "" {
		node.Spec.PodCIDR = a.cfg.PodCIDR
		node.Spec.PodCIDRs = []string{a.cfg.PodCIDR}
	}
	_, err := a.cfg.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
	}
	if err := a.updateNodeStatus(ctx); err != nil {
		return fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

// nodeStatusReportInterval is how often the Node's status is written when nothing in it
// changed: the kubelet's nodeStatusReportFrequency. The Lease is the heartbeat; a status
// written every 10 s by every node would be most of the API server's writes at scale.
const nodeStatusReportInterval = 5 * time.Minute

// updateNodeStatus posts the Node's status (capacity, conditions, addresses, nodeInfo)
// when it changed or nodeStatusReportInterval has passed since the last post.
func (a *Agent) updateNodeStatus(ctx context.Context) error {
	nodes := a.cfg.Kube.CoreV1().Nodes()
	node, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node: %w", err)
	}
	old := node.Status.DeepCopy()
	capacity := a.nodeCapacity()
	node.Status.Capacity = capacity
	node.Status.Allocatable = capacity.DeepCopy() // nothing is reserved yet
	node.Status.Conditions = a.nodeConditions(ctx, node.Status.Conditions)
	node.Status.Addresses = a.nodeAddresses()
	node.Status.NodeInfo = a.nodeInfo()
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = a.streams.port()
	// The CSI volumes staged or published here, which the attach-detach controller
	// must not detach (csivolumes.go).
	node.Status.VolumesInUse = a.csiVolumesInUse()
	node.Status.Phase = ""
	if !nodeStatusChanged(old, &node.Status) && a.now().Sub(a.lastNodeReport) < nodeStatusReportInterval {
		return nil
	}
	if _, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update node status: %w", err)
	}
	a.lastNodeReport = a.now()
	return nil
}

// nodeStatusChanged compares two statuses, heartbeat times aside.
func nodeStatusChanged(old, updated *corev1.NodeStatus) bool {
	strip := func(s *corev1.NodeStatus) *corev1.NodeStatus {
		s = s.DeepCopy()
		for i := range s.Conditions {
			s.Conditions[i].LastHeartbeatTime = metav1.Time{}
		}
		return s
	}
	return !apiequality.Semantic.DeepEqual(strip(old), strip(updated))
}

// postStatus posts the Node's status every StatusInterval until ctx ends.
func (a *Agent) postStatus(ctx context.Context) {
	tick := time.NewTicker(a.cfg.StatusInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := a.updateNodeStatus(ctx)
		if apierrors.IsNotFound(err) {
			// Someone deleted the Node: register it again, as the kubelet does.
			err = a.registerNode(ctx)
		}
		if err != nil && ctx.Err() == nil {
			a.log.Error("node status", "err", err)
		}
	}
}

// renewLease renews the node's Lease in kube-node-lease every LeaseRenewInterval, which
// the node lifecycle controller reads as the node's heartbeat.
func (a *Agent) renewLease(ctx context.Context) {
	tick := time.NewTicker(a.cfg.LeaseRenewInterval)
	defer tick.Stop()
	for {
		if err := a.renewLeaseOnce(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("renew node lease", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (a *Agent) renewLeaseOnce(ctx context.Context) error {
	leases := a.cfg.Kube.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(a.now())
	lease, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(a.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(leaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}
		// Owned by the Node, so the garbage collector removes it with the Node.
		if node, err := a.cfg.Kube.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{}); err == nil {
			lease.OwnerReferences = []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
			}}
		}
		if _, err := leases.Create(ctx, lease, metav1.CreateOptions{}); apierrors.IsNotFound(err) {
			// The namespace is the API server's to make; make it if it has not.
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: corev1.NamespaceNodeLease}}
			if _, err := a.cfg.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create namespace %s: %w", corev1.NamespaceNodeLease, err)
			}
			_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create lease: %w", err)
			}
		} else if err != nil {
			return fmt.Errorf("create lease: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get lease: %w", err)
	}
	lease.Spec.HolderIdentity = ptr.To(a.cfg.NodeName)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(leaseDuration / time.Second))
	lease.Spec.RenewTime = &now
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	return nil
}
