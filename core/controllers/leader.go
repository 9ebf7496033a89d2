package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Election is how several controller managers on one cluster agree that one of them runs
// the controllers: a coordination.k8s.io Lease, as kube-controller-manager uses.
type Election struct {
	// Namespace and Name of the Lease (kube-system/berth-controller-manager by default).
	Namespace, Name string
	// Identity of this manager in the Lease (host name and a random suffix by default).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are Kubernetes' defaults (15 s, 10 s,
	// 2 s) when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

func (e *Election) defaults() {
	if e.Namespace == "" {
		e.Namespace = "kube-system"
	}
	if e.Name == "" {
		e.Name = "berth-controller-manager"
	}
	if e.Identity == "" {
		host, _ := os.Hostname()
		e.Identity = host + "_" + string(uuid.NewUUID())
	}
	if e.LeaseDuration == 0 {
		e.LeaseDuration = 15 * time.Second
	}
	if e.RenewDeadline == 0 {
		e.RenewDeadline = 10 * time.Second
	}
	if e.RetryPeriod == 0 {
		e.RetryPeriod = 2 * time.Second
	}
}

// RunElected runs the controllers (Run) only while this manager holds the Lease: it
// campaigns, runs them once elected, stops them when the Lease is lost and campaigns again,
// until ctx ends. On a clean stop it gives the Lease up, so a restarted or standby manager
// takes over at once instead of after LeaseDuration.
func RunElected(ctx context.Context, cfg *rest.Config, opts Options, e Election) error {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	e.defaults()
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "berth-controller-manager/leader-election"
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("leader election client: %w", err)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metaFor(e.Namespace, e.Name),
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	for ctx.Err() == nil {
		// One round: campaign, lead until the Lease is lost (or the controllers fail), and
		// wait until the controllers have stopped before campaigning again.
		round, endRound := context.WithCancel(ctx)
		started := make(chan struct{})
		done := make(chan error, 1)
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   e.LeaseDuration,
			RenewDeadline:   e.RenewDeadline,
			RetryPeriod:     e.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            e.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(leading context.Context) {
					close(started)
					log.Info("elected: running the controllers", "lease", e.Namespace+"/"+e.Name, "identity", e.Identity)
					err := Run(leading, cfg, opts)
					if err != nil {
						endRound() // give the Lease up: another manager may do better
					}
					done <- err
				},
				OnStoppedLeading: func() {
					log.Info("not leading", "lease", e.Namespace+"/"+e.Name, "identity", e.Identity)
				},
				OnNewLeader: func(id string) {
					if id != e.Identity {
						log.Info("another manager leads", "leader", id)
					}
				},
			},
		})
		if err != nil {
			endRound()
			return fmt.Errorf("leader election: %w", err)
		}
		elector.Run(round) // returns once leadership is lost or the round ends
		endRound()
		select {
		case <-started:
			if err := <-done; err != nil && ctx.Err() == nil {
				log.Error("controllers failed; campaigning again", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(e.RetryPeriod):
				}
			}
		default:
		}
	}
	return nil
}

func metaFor(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}
