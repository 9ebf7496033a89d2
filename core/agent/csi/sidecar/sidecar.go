// Package sidecar runs, inside the node agent, what Kubernetes runs as CSI sidecar
// containers next to a driver's controller service: the external-provisioner
// (CreateVolume for claims handed to the driver, DeleteVolume for released volumes), the
// external-resizer (ControllerExpandVolume when a bound claim grows) and the
// external-attacher (ControllerPublishVolume for VolumeAttachments). They speak the same
// Kubernetes protocol (annotations, finalizers, events, conditions) as the originals, so
// that the PV controller, the scheduler and kubectl see what they would see in Kubernetes.
//
// A driver whose volumes are tied to nodes (VOLUME_ACCESSIBILITY_CONSTRAINTS) gets one
// sidecar per node, acting only for its own node, like external-provisioner's
// --node-deployment; any other driver gets one active sidecar in the cluster, chosen by a
// Lease.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
	"berth.dev/berth/core/kubeclient"
)

// Config is what the agent knows about one driver with a controller service.
type Config struct {
	Client kubeclient.Interface
	// Conn is the driver's socket.
	Conn       *grpc.ClientConn
	DriverName string
	NodeName   string
	// Topology is the node's segment from NodeGetInfo (nil if the driver has none).
	Topology map[string]string
	// NodeScoped is true when the driver declared VOLUME_ACCESSIBILITY_CONSTRAINTS: this sidecar then
	// acts only on claims/volumes/attachments of its own node; otherwise one sidecar per driver in the
	// cluster acts, chosen by a coordination.k8s.io Lease "csi-sidecar-<driver with dots as dashes>" in kube-system.
	NodeScoped bool
	Logger     *slog.Logger
}

// The names Kubernetes and its sidecars use; the PV controller, the scheduler and the
// agent read the same ones.
const (
	annStorageProvisioner     = "volume.kubernetes.io/storage-provisioner"
	annBetaStorageProvisioner = "volume.beta.kubernetes.io/storage-provisioner"
	annSelectedNode           = "volume.kubernetes.io/selected-node"
	annProvisionedBy          = "pv.kubernetes.io/provisioned-by"
	annBetaStorageClass       = "volume.beta.kubernetes.io/storage-class"
	// provisionerFinalizer keeps a dynamically provisioned PV until its volume is deleted.
	provisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"
	// annVANodeID records on a VolumeAttachment the node ID it was published to, so that it
	// can be unpublished after the node (and its CSINode) is gone, as external-attacher does.
	annVANodeID = "csi.alpha.kubernetes.io/node-id"
	// annNodeID is the agent's Node annotation: JSON {driver: nodeID}.
	annNodeID = "csi.volume.kubernetes.io/nodeid"
	// csiParamPrefix marks the class parameters meant for the sidecar, not the driver.
	csiParamPrefix = "csi.storage.k8s.io/"
	paramFSType    = "csi.storage.k8s.io/fstype"
	defaultFSType  = "ext4"

	// rpcTimeout bounds one call to the driver; a slow call is retried with backoff.
	rpcTimeout = 2 * time.Minute
	// resync re-offers every object now and then, so that a claim waiting for something no
	// event announces (a StorageClass created later) is not forgotten.
	resync = 10 * time.Minute
)

// LeaseName is the Lease that elects the one active sidecar of a driver that is not node scoped.
func LeaseName(driver string) string {
	return "csi-sidecar-" + strings.ReplaceAll(driver, ".", "-")
}

// attacherFinalizer is external-attacher's finalizer for driver: every character other
// than a letter, a digit or '-' becomes '-' (local.csi.berth.dev -> local-csi-berth-dev).
func attacherFinalizer(driver string) string {
	b := []byte(driver)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 0 && b[len(b)-1] == '-' {
		b = append(b, 'X')
	}
	return "external-attacher/" + string(b)
}

// capabilities is what the driver's controller service declared.
type capabilities struct {
	createDelete, expand, publish, clone, singleNodeMultiWriter bool
}

// Run runs the sidecars the driver's controller capabilities call for (provisioner and
// deleter for CREATE_DELETE_VOLUME, resizer for EXPAND_VOLUME, attacher for
// PUBLISH_UNPUBLISH_VOLUME) until ctx ends. A driver that does not answer
// ControllerGetCapabilities yet is asked again with backoff.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Client == nil || cfg.Conn == nil || cfg.DriverName == "" {
		return fmt.Errorf("csi sidecar: Client, Conn and DriverName are required")
	}
	if cfg.NodeScoped && cfg.NodeName == "" {
		return fmt.Errorf("csi sidecar for %s: a node-scoped driver needs NodeName", cfg.DriverName)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("driver", cfg.DriverName)
	caps, err := getCapabilities(ctx, cfg.DriverName, csi.NewControllerClient(cfg.Conn), log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if !caps.createDelete && !caps.expand && !caps.publish {
		log.Info("driver's controller service has nothing for the sidecars to do")
		<-ctx.Done()
		return nil
	}
	s := &sidecar{cfg: cfg, log: log, caps: caps, ctrl: csi.NewControllerClient(cfg.Conn)}
	if cfg.NodeScoped {
		return s.runControllers(ctx)
	}
	return s.runElected(ctx)
}

// getCapabilities asks the controller service what it supports, retrying until it answers
// or ctx ends (a driver just started may not serve yet).
func getCapabilities(ctx context.Context, driver string, ctrl csi.ControllerClient, log *slog.Logger) (capabilities, error) {
	var caps capabilities
	backoff := wait.Backoff{Duration: time.Second, Factor: 2, Steps: 1 << 30, Cap: time.Minute}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		defer cancel()
		resp, err := ctrl.ControllerGetCapabilities(cctx, &csi.ControllerGetCapabilitiesRequest{})
		if err != nil {
			log.Info("ControllerGetCapabilities failed, will retry", "err", err)
			return false, nil
		}
		for _, c := range resp.GetCapabilities() {
			switch c.GetRpc().GetType() {
			case csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME:
				caps.createDelete = true
			case csi.ControllerServiceCapability_RPC_EXPAND_VOLUME:
				caps.expand = true
			case csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME:
				caps.publish = true
			case csi.ControllerServiceCapability_RPC_CLONE_VOLUME:
				caps.clone = true
			case csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER:
				caps.singleNodeMultiWriter = true
			}
		}
		return true, nil
	})
	if err != nil {
		return caps, fmt.Errorf("ControllerGetCapabilities of %s: %w", driver, err)
	}
	return caps, nil
}

// sidecar is one driver's set of sidecars.
type sidecar struct {
	cfg  Config
	log  *slog.Logger
	caps capabilities
	ctrl csi.ControllerClient
}

// runElected runs the sidecars only while this agent holds the driver's Lease, so that a
// cluster-wide driver gets exactly one provisioner, resizer and attacher.
func (s *sidecar) runElected(ctx context.Context) error {
	identity := s.cfg.NodeName + "_" + string(uuid.NewUUID())
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: LeaseName(s.cfg.DriverName)},
		Client:     s.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	for ctx.Err() == nil {
		// One round: campaign; once elected, run the controllers here (not in client-go's
		// callback goroutine, which nobody waits for) until the Lease is lost or they fail.
		round, endRound := context.WithCancel(ctx)
		leading := make(chan context.Context, 1)
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Name:            lock.LeaseMeta.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				// Called at most once per elector run: the buffer never blocks it.
				OnStartedLeading: func(lctx context.Context) { leading <- lctx },
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			endRound()
			return fmt.Errorf("leader election for the csi sidecars of %s: %w", s.cfg.DriverName, err)
		}
		elector := make(chan struct{})
		go func() {
			defer close(elector)
			le.Run(round)
		}()
		select {
		case lctx := <-leading:
			s.log.Info("elected: running the csi sidecars", "lease", lock.LeaseMeta.Name, "identity", identity)
			if err := s.runControllers(lctx); err != nil {
				s.log.Error("csi sidecars failed; giving up the Lease and campaigning again", "err", err)
			} else if ctx.Err() == nil {
				s.log.Info("lost the Lease of the csi sidecars", "lease", lock.LeaseMeta.Name)
			}
		case <-elector:
		}
		// Ending the round releases the Lease (ReleaseOnCancel) if it is still held.
		endRound()
		<-elector
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	return nil
}

// runControllers starts the informers and the work queues of each role and blocks until
// ctx ends and every worker has returned.
func (s *sidecar) runControllers(ctx context.Context) error {
	client := s.cfg.Client
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	// The sources external-provisioner and external-resizer record as, so that
	// `kubectl describe` reads the same.
	provisionerRecorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: s.cfg.DriverName + "_" + s.cfg.NodeName})
	resizerRecorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "external-resizer " + s.cfg.DriverName})

	// Informers are made only where a role below asks for them: a driver without
	// PUBLISH_UNPUBLISH_VOLUME, say, watches no VolumeAttachments.
	factory := kubeclient.NewInformers(client, resync, nil)
	defer factory.Shutdown()
	claimLister := func() corelisters.PersistentVolumeClaimLister {
		return corelisters.NewPersistentVolumeClaimLister(factory.PersistentVolumeClaims().GetIndexer())
	}
	volumeLister := func() corelisters.PersistentVolumeLister {
		return corelisters.NewPersistentVolumeLister(factory.PersistentVolumes().GetIndexer())
	}

	rl := func() workqueue.TypedRateLimiter[string] {
		// external-provisioner's defaults: 1 s doubling up to 5 min per key.
		return workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute)
	}
	type role struct {
		name    string
		queue   workqueue.TypedRateLimitingInterface[string]
		r       reconcile.Reconciler[string]
		workers int
	}
	var roles []role
	newQueue := func(name string) workqueue.TypedRateLimitingInterface[string] {
		return workqueue.NewTypedRateLimitingQueueWithConfig(rl(), workqueue.TypedRateLimitingQueueConfig[string]{Name: s.cfg.DriverName + "-" + name})
	}
	var synced []cache.InformerSynced
	add := func(inf cache.SharedIndexInformer, h cache.ResourceEventHandlerFuncs) error {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("csi sidecars of %s: event handler: %w", s.cfg.DriverName, err)
		}
		synced = append(synced, inf.HasSynced)
		return nil
	}

	if s.caps.createDelete {
		classes := storagelisters.NewStorageClassLister(factory.StorageClasses().GetIndexer())
		p := &provisioner{s: s, recorder: provisionerRecorder, claims: claimLister(), volumes: volumeLister(), classes: classes}
		pq := newQueue("provisioner")
		// Claims often come in bursts (a StatefulSet, a namespace's manifests); most of a
		// provisioning is waiting on the driver and the API server, so many go at once
		// (external-provisioner runs 100 workers).
		roles = append(roles, role{"provisioner", pq, reconcile.Func[string](p.sync), 16})
		if err := add(factory.PersistentVolumeClaims(), claimHandler(pq, p.wants)); err != nil {
			return err
		}
		if err := add(factory.StorageClasses(), cache.ResourceEventHandlerFuncs{}); err != nil {
			return err
		}
		d := &deleter{s: s, recorder: provisionerRecorder, volumes: volumeLister()}
		dq := newQueue("deleter")
		roles = append(roles, role{"deleter", dq, reconcile.Func[string](d.sync), 8})
		if err := add(factory.PersistentVolumes(), volumeHandler(dq, d.wants)); err != nil {
			return err
		}
	}
	if s.caps.expand {
		r := &resizer{s: s, recorder: resizerRecorder, claims: claimLister(), volumes: volumeLister()}
		rq := newQueue("resizer")
		roles = append(roles, role{"resizer", rq, reconcile.Func[string](r.sync), 2})
		if err := add(factory.PersistentVolumeClaims(), claimHandler(rq, r.wants)); err != nil {
			return err
		}
		if err := add(factory.PersistentVolumes(), cache.ResourceEventHandlerFuncs{}); err != nil {
			return err
		}
	}
	if s.caps.publish {
		vaInformer := factory.VolumeAttachments()
		attachments := storagelisters.NewVolumeAttachmentLister(vaInformer.GetIndexer())
		a := &attacher{s: s, attachments: attachments, volumes: volumeLister()}
		aq := newQueue("attacher")
		roles = append(roles, role{"attacher", aq, reconcile.Func[string](a.sync), 2})
		if err := add(vaInformer, attachmentHandler(aq, a.wants)); err != nil {
			return err
		}
		if err := add(factory.PersistentVolumes(), cache.ResourceEventHandlerFuncs{}); err != nil {
			return err
		}
	}

	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		for _, r := range roles {
			r.queue.ShutDown()
		}
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("csi sidecars: informer caches did not sync")
	}
	names := make([]string, 0, len(roles))
	for _, r := range roles {
		names = append(names, r.name)
	}
	s.log.Info("csi sidecars running", "roles", names, "nodeScoped", s.cfg.NodeScoped, "node", s.cfg.NodeName)
	var wg sync.WaitGroup
	for _, r := range roles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reconcile.Work(ctx, r.queue, r.r, r.workers, s.log.With("sidecar", r.name))
		}()
	}
	wg.Wait()
	return nil
}

// claimHandler queues the namespace/name of the claims wants accepts.
func claimHandler(q workqueue.TypedRateLimitingInterface[string], wants func(*corev1.PersistentVolumeClaim) bool) cache.ResourceEventHandlerFuncs {
	enqueue := func(obj any) {
		if c, ok := obj.(*corev1.PersistentVolumeClaim); ok && wants(c) {
			q.Add(c.Namespace + "/" + c.Name)
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }}
}

// volumeHandler queues the names of the PVs wants accepts.
func volumeHandler(q workqueue.TypedRateLimitingInterface[string], wants func(*corev1.PersistentVolume) bool) cache.ResourceEventHandlerFuncs {
	enqueue := func(obj any) {
		if v, ok := obj.(*corev1.PersistentVolume); ok && wants(v) {
			q.Add(v.Name)
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }}
}
