package job

import (
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The delay before a failed pod is replaced starts at 10 s and doubles with every failure
// since the last success, up to 6 minutes (Kubernetes' DefaultJobPodFailureBackOff and
// MaxJobPodFailureBackOff).
const (
	podFailureBackoff    = 10 * time.Second
	maxPodFailureBackoff = 6 * time.Minute
)

// backoffRecord is what the pod-recreation delay of one Job depends on.
type backoffRecord struct {
	failuresAfterLastSuccess int32
	lastFailure              time.Time // zero: none
}

// backoffStore keeps the records in memory, as Kubernetes does: a restarted controller
// forgets them and replaces failed pods without waiting once.
type backoffStore struct {
	mu      sync.Mutex
	records map[string]backoffRecord
}

func newBackoffStore() *backoffStore { return &backoffStore{records: map[string]backoffRecord{}} }

// next is the Job's record once the newly finished pods are accounted: a success resets the
// count to the failures that came after it.
func (s *backoffStore) next(key string, succeeded, failed []*corev1.Pod) backoffRecord {
	s.mu.Lock()
	r := s.records[key]
	s.mu.Unlock()
	if len(succeeded) == 0 && len(failed) == 0 {
		return r
	}
	failedAt := finishTimes(failed)
	if len(succeeded) == 0 {
		r.failuresAfterLastSuccess += int32(len(failedAt))
		r.lastFailure = failedAt[len(failedAt)-1]
		return r
	}
	succeededAt := finishTimes(succeeded)
	lastSuccess := succeededAt[len(succeededAt)-1]
	r = backoffRecord{}
	for i := len(failedAt) - 1; i >= 0 && failedAt[i].After(lastSuccess); i-- {
		if r.lastFailure.IsZero() {
			r.lastFailure = failedAt[i]
		}
		r.failuresAfterLastSuccess++
	}
	return r
}

// save keeps a record once the status that counts its pods is written.
func (s *backoffStore) save(key string, r backoffRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[key] = r
}

// forget drops the record of a finished or deleted Job.
func (s *backoffStore) forget(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, key)
}

// remaining is how long pod creation must still wait at now.
func (r backoffRecord) remaining(now time.Time) time.Duration {
	if r.failuresAfterLastSuccess == 0 {
		return 0
	}
	d := podFailureBackoff
	for i := int32(1); i < r.failuresAfterLastSuccess && d < maxPodFailureBackoff; i++ {
		d *= 2
	}
	d = min(d, maxPodFailureBackoff)
	if elapsed := now.Sub(r.lastFailure); elapsed < d {
		return d - elapsed
	}
	return 0
}

// finishTimes returns the pods' finish times, sorted.
func finishTimes(pods []*corev1.Pod) []time.Time {
	out := make([]time.Time, len(pods))
	for i, p := range pods {
		out[i] = finishTime(p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// finishTime estimates when a pod finished: its containers' latest finishedAt if all have
// one, else when it turned not ready (the node agent does that as it stops a pod), else its
// deletion time less the grace period, else its creation.
func finishTime(p *corev1.Pod) time.Time {
	var latest time.Time
	complete := len(p.Status.ContainerStatuses) > 0
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Terminated == nil || cs.State.Terminated.FinishedAt.IsZero() {
			complete = false
			break
		}
		if t := cs.State.Terminated.FinishedAt.Time; t.After(latest) {
			latest = t
		}
	}
	if complete {
		return latest
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionFalse && !c.LastTransitionTime.IsZero() {
			return c.LastTransitionTime.Time
		}
	}
	if p.DeletionTimestamp != nil {
		grace := int64(0)
		if p.DeletionGracePeriodSeconds != nil {
			grace = *p.DeletionGracePeriodSeconds
		}
		return p.DeletionTimestamp.Add(-time.Duration(grace) * time.Second)
	}
	return p.CreationTimestamp.Time
}
