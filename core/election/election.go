// Package election runs a piece of the control plane (the controllers, the scheduler) only
// while its process holds a coordination.k8s.io Lease, so that several servers on one etcd
// run one active copy: client-go's leader election, with Kubernetes' default timings.
package election

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

// Lease says which Lease is campaigned for, and how.
type Lease struct {
	// Namespace and Name of the Lease (kube-system by default; Name is required).
	Namespace, Name string
	// Identity of this process in the Lease (host name and a random suffix by default).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are Kubernetes' defaults (15 s, 10 s,
	// 2 s) when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

func (l *Lease) defaults() {
	if l.Namespace == "" {
		l.Namespace = "kube-system"
	}
	if l.Identity == "" {
		host, _ := os.Hostname()
		l.Identity = host + "_" + string(uuid.NewUUID())
	}
	if l.LeaseDuration == 0 {
		l.LeaseDuration = 15 * time.Second
	}
	if l.RenewDeadline == 0 {
		l.RenewDeadline = 10 * time.Second
	}
	if l.RetryPeriod == 0 {
		l.RetryPeriod = 2 * time.Second
	}
}

// Run calls lead only while this process holds the Lease: it campaigns, runs lead once
// elected (lead must return when its context ends), stops it when the Lease is lost and
// campaigns again, until ctx ends. If lead fails, the Lease is given up (another process
// may do better) and the campaign starts again after RetryPeriod. On a clean stop the
// Lease is given up, so a restarted or standby process takes over at once instead of
// after LeaseDuration. what names the piece in the log ("the controllers").
func Run(ctx context.Context, cfg *rest.Config, l Lease, what string, log *slog.Logger, lead func(ctx context.Context) error) error {
	if l.Name == "" {
		return fmt.Errorf("leader election for %s: no Lease name", what)
	}
	if log == nil {
		log = slog.Default()
	}
	l.defaults()
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "berth/leader-election/" + l.Name
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("leader election client: %w", err)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity},
	}
	lease := l.Namespace + "/" + l.Name
	for ctx.Err() == nil {
		// One round: campaign, lead until the Lease is lost (or lead fails), and wait until
		// lead has returned before campaigning again.
		round, endRound := context.WithCancel(ctx)
		started := make(chan struct{})
		done := make(chan error, 1)
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   l.LeaseDuration,
			RenewDeadline:   l.RenewDeadline,
			RetryPeriod:     l.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            l.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(leading context.Context) {
					close(started)
					log.Info("elected: running "+what, "lease", lease, "identity", l.Identity)
					err := lead(leading)
					if err != nil {
						endRound()
					}
					done <- err
				},
				OnStoppedLeading: func() { log.Info("not leading", "lease", lease, "identity", l.Identity) },
				OnNewLeader: func(id string) {
					if id != l.Identity {
						log.Info("another process leads", "lease", lease, "leader", id)
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
				log.Error(what+" failed; campaigning again", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(l.RetryPeriod):
				}
			}
		default:
		}
	}
	return nil
}
