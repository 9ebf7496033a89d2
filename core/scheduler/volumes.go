package scheduler

import (
	"fmt"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/scheduler/plugins"
)

// volumeListers registers the informers VolumeBinding reads (claims, volumes, classes,
// CSINodes, CSIDrivers) before the factory starts, and returns their listers.
func (s *Scheduler) volumeListers(factory informers.SharedInformerFactory) plugins.VolumeListers {
	core, storage := factory.Core().V1(), factory.Storage().V1()
	l := plugins.VolumeListers{
		Claims:     core.PersistentVolumeClaims().Lister(),
		Volumes:    core.PersistentVolumes().Lister(),
		Classes:    storage.StorageClasses().Lister(),
		CSINodes:   storage.CSINodes().Lister(),
		CSIDrivers: storage.CSIDrivers().Lister(),
	}
	s.synced = append(s.synced,
		core.PersistentVolumeClaims().Informer().HasSynced, core.PersistentVolumes().Informer().HasSynced,
		storage.StorageClasses().Informer().HasSynced, storage.CSINodes().Informer().HasSynced,
		storage.CSIDrivers().Informer().HasSynced)
	return l
}

// addVolumeEventHandlers retries the pods VolumeBinding rejected when a claim, a volume, a
// class, a node's CSI drivers or a CSIDriver is added or changes: a claim created (by the
// ephemeral controller) or bound, a volume made Available, a driver started on a node may
// each make such a pod fit (the cluster events kube-scheduler declares for VolumeBinding).
func (s *Scheduler) addVolumeEventHandlers(factory informers.SharedInformerFactory) error {
	retry := func() { s.queue.MoveAllToActiveOrBackoff(rejectedBy(plugins.VolumeBindingName)) }
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { retry() },
		UpdateFunc: func(any, any) { retry() },
	}
	core, storage := factory.Core().V1(), factory.Storage().V1()
	for _, inf := range []cache.SharedIndexInformer{
		core.PersistentVolumeClaims().Informer(), core.PersistentVolumes().Informer(),
		storage.StorageClasses().Informer(), storage.CSINodes().Informer(), storage.CSIDrivers().Informer(),
	} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("volume informers: %w", err)
		}
	}
	return nil
}
