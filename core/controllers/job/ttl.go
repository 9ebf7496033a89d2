package job

import (
	"context"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/controllers/reconcile"
)

// expire deletes a finished Job once ttlSecondsAfterFinished has passed since it finished,
// which is the work of Kubernetes' TTL-after-finished controller, and otherwise asks to be
// called again then. The pods go with it (Background propagation, by the garbage
// collector).
func (c *Controller) expire(ctx context.Context, job *batchv1.Job) (reconcile.Result, error) {
	if job.Spec.TTLSecondsAfterFinished == nil || job.DeletionTimestamp != nil {
		return reconcile.Result{}, nil
	}
	at, _ := finished(job)
	expireAt := at.Add(time.Duration(*job.Spec.TTLSecondsAfterFinished) * time.Second)
	if now := c.opts.Now(); now.Before(expireAt) {
		return reconcile.Result{RequeueAfter: expireAt.Sub(now)}, nil
	}
	policy := metav1.DeletePropagationBackground
	err := c.kube.BatchV1().Jobs(job.Namespace).Delete(ctx, job.Name, metav1.DeleteOptions{
		PropagationPolicy: &policy,
		// Not a namesake created since the read, nor a Job whose TTL was just extended.
		Preconditions: &metav1.Preconditions{UID: &job.UID, ResourceVersion: &job.ResourceVersion},
	})
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if apierrors.IsConflict(err) {
		return reconcile.Result{Requeue: true}, nil
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("delete job %s/%s after its TTL: %w", job.Namespace, job.Name, err)
	}
	c.log.Info("deleted finished job after its TTL", "job", job.Namespace+"/"+job.Name)
	return reconcile.Result{}, nil
}
