package kubeclient

import (
	"context"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Informers is a set of shared informers of one client, each made the first time it is
// asked for and started and stopped with the others: client-go's SharedInformerFactory,
// with the same semantics (one informer per kind, whoever asks; the set's resync period
// and list options for all), for the kinds the node's components watch only. Listers
// come from k8s.io/client-go/listers over an informer's indexer, e.g.
// corev1listers.NewPodLister(set.Pods().GetIndexer()).
type Informers struct {
	client Interface
	resync time.Duration
	tweak  func(*metav1.ListOptions)

	mu           sync.Mutex
	informers    map[reflect.Type]cache.SharedIndexInformer
	started      map[reflect.Type]bool
	shuttingDown bool
	wg           sync.WaitGroup
}

// NewInformers makes an empty set over client, of informers of all namespaces that
// resync every resync (never when zero). tweak, when not nil, edits the options of every
// list and watch of the set (a field selector, say).
func NewInformers(client Interface, resync time.Duration, tweak func(*metav1.ListOptions)) *Informers {
	return &Informers{
		client: client, resync: resync, tweak: tweak,
		informers: map[reflect.Type]cache.SharedIndexInformer{},
		started:   map[reflect.Type]bool{},
	}
}

// Start runs, until stop is closed, the informers made since the last Start; after
// Shutdown it does nothing.
func (f *Informers) Start(stop <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shuttingDown {
		return
	}
	for t, inf := range f.informers {
		if f.started[t] {
			continue
		}
		f.wg.Go(func() { inf.Run(stop) })
		f.started[t] = true
	}
}

// Shutdown stops further Starts and waits for the started informers to return, which
// they do once their stop channel is closed.
func (f *Informers) Shutdown() {
	f.mu.Lock()
	f.shuttingDown = true
	f.mu.Unlock()
	f.wg.Wait()
}

// Pods is the set's Pod informer.
func (f *Informers) Pods() cache.SharedIndexInformer {
	c := f.client.CoreV1().Pods(metav1.NamespaceAll)
	return shared(f, &corev1.Pod{}, c.List, c.Watch)
}

// Services is the set's Service informer.
func (f *Informers) Services() cache.SharedIndexInformer {
	c := f.client.CoreV1().Services(metav1.NamespaceAll)
	return shared(f, &corev1.Service{}, c.List, c.Watch)
}

// Namespaces is the set's Namespace informer.
func (f *Informers) Namespaces() cache.SharedIndexInformer {
	c := f.client.CoreV1().Namespaces()
	return shared(f, &corev1.Namespace{}, c.List, c.Watch)
}

// Secrets is the set's Secret informer.
func (f *Informers) Secrets() cache.SharedIndexInformer {
	c := f.client.CoreV1().Secrets(metav1.NamespaceAll)
	return shared(f, &corev1.Secret{}, c.List, c.Watch)
}

// PersistentVolumeClaims is the set's PersistentVolumeClaim informer.
func (f *Informers) PersistentVolumeClaims() cache.SharedIndexInformer {
	c := f.client.CoreV1().PersistentVolumeClaims(metav1.NamespaceAll)
	return shared(f, &corev1.PersistentVolumeClaim{}, c.List, c.Watch)
}

// PersistentVolumes is the set's PersistentVolume informer.
func (f *Informers) PersistentVolumes() cache.SharedIndexInformer {
	c := f.client.CoreV1().PersistentVolumes()
	return shared(f, &corev1.PersistentVolume{}, c.List, c.Watch)
}

// EndpointSlices is the set's EndpointSlice informer.
func (f *Informers) EndpointSlices() cache.SharedIndexInformer {
	c := f.client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)
	return shared(f, &discoveryv1.EndpointSlice{}, c.List, c.Watch)
}

// Ingresses is the set's Ingress informer.
func (f *Informers) Ingresses() cache.SharedIndexInformer {
	c := f.client.NetworkingV1().Ingresses(metav1.NamespaceAll)
	return shared(f, &networkingv1.Ingress{}, c.List, c.Watch)
}

// IngressClasses is the set's IngressClass informer.
func (f *Informers) IngressClasses() cache.SharedIndexInformer {
	c := f.client.NetworkingV1().IngressClasses()
	return shared(f, &networkingv1.IngressClass{}, c.List, c.Watch)
}

// StorageClasses is the set's StorageClass informer.
func (f *Informers) StorageClasses() cache.SharedIndexInformer {
	c := f.client.StorageV1().StorageClasses()
	return shared(f, &storagev1.StorageClass{}, c.List, c.Watch)
}

// VolumeAttachments is the set's VolumeAttachment informer.
func (f *Informers) VolumeAttachments() cache.SharedIndexInformer {
	c := f.client.StorageV1().VolumeAttachments()
	return shared(f, &storagev1.VolumeAttachment{}, c.List, c.Watch)
}

// shared returns f's informer of example's kind, made from listFn and watchFn the first
// time.
func shared[L runtime.Object](f *Informers, example runtime.Object,
	listFn func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := reflect.TypeOf(example)
	if inf, ok := f.informers[t]; ok {
		return inf
	}
	inf := newInformer(example, listFn, watchFn, f.resync, f.tweak)
	f.informers[t] = inf
	return inf
}

// newInformer is what client-go's generated NewFilteredXInformer makes for a kind X, from
// the typed client's List and Watch: tweak applied to the options of every call, and the
// namespace index that the generated informers have and listers' per-namespace List uses.
func newInformer[L runtime.Object](example runtime.Object,
	listFn func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
	resync time.Duration, tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if tweak != nil {
				tweak(&o)
			}
			return listFn(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			if tweak != nil {
				tweak(&o)
			}
			return watchFn(ctx, o)
		},
	}
	return cache.NewSharedIndexInformer(lw, example, resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}
