package job

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// completionIndexEnv is the variable through which an Indexed Job's containers learn their
// index.
const completionIndexEnv = "JOB_COMPLETION_INDEX"

func isIndexed(job *batchv1.Job) bool {
	return job.Spec.CompletionMode != nil && *job.Spec.CompletionMode == batchv1.IndexedCompletion
}

// indexState is the progress of an Indexed Job: which indexes have succeeded.
type indexState struct {
	completions int
	// recorded are the indexes in status.completedIndexes.
	recorded map[int]bool
	// done adds those of succeeded pods not recorded yet.
	done map[int]bool
}

func newIndexState(job *batchv1.Job, pods []*corev1.Pod) *indexState {
	x := &indexState{completions: int(*specCompletions(job)), recorded: parseIndexes(job.Status.CompletedIndexes, int(*specCompletions(job))), done: map[int]bool{}}
	for ix := range x.recorded {
		x.done[ix] = true
	}
	for _, p := range pods {
		if ix := completionIndex(p); p.Status.Phase == corev1.PodSucceeded && hasTrackingFinalizer(p) && validIndex(job, ix) {
			x.done[ix] = true
		}
	}
	return x
}

func (x *indexState) total() int32 { return int32(len(x.done)) }

// record adds newly counted indexes to the recorded ones and returns them formatted for
// status.completedIndexes.
func (x *indexState) record(ixs []int) string {
	for _, ix := range ixs {
		x.recorded[ix] = true
	}
	return formatIndexes(x.recorded)
}

// pending returns up to n indexes, lowest first, that neither succeeded nor have an active
// pod.
func (x *indexState) pending(active []*corev1.Pod, n int) []int {
	taken := map[int]bool{}
	for _, p := range active {
		taken[completionIndex(p)] = true
	}
	var out []int
	for ix := 0; ix < x.completions && len(out) < n; ix++ {
		if !x.done[ix] && !taken[ix] {
			out = append(out, ix)
		}
	}
	return out
}

// duplicates splits the active pods into those to delete (no valid index, an index that
// already succeeded, or one another active pod holds) and those to keep.
func (x *indexState) duplicates(active []*corev1.Pod) (remove, keep []*corev1.Pod) {
	seen := map[int]bool{}
	for _, p := range active {
		ix := completionIndex(p)
		if ix < 0 || ix >= x.completions || x.done[ix] || seen[ix] {
			remove = append(remove, p)
			continue
		}
		seen[ix] = true
		keep = append(keep, p)
	}
	return remove, keep
}

// completionIndex reads a pod's index from its annotation; -1 when it has none.
func completionIndex(p *corev1.Pod) int {
	v, ok := p.Annotations[batchv1.JobCompletionIndexAnnotation]
	if !ok {
		return -1
	}
	ix, err := strconv.Atoi(v)
	if err != nil || ix < 0 {
		return -1
	}
	return ix
}

func validIndex(job *batchv1.Job, ix int) bool {
	c := specCompletions(job)
	return ix >= 0 && c != nil && ix < int(*c)
}

// setCompletionIndex gives a new pod its index: annotation and label, a hostname
// "<job>-<index>" (stable DNS names with a headless Service), a name starting so, and the
// JOB_COMPLETION_INDEX variable in every container.
func setCompletionIndex(job *batchv1.Job, pod *corev1.Pod, ix int) {
	v := strconv.Itoa(ix)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[batchv1.JobCompletionIndexAnnotation] = v
	pod.Labels[batchv1.JobCompletionIndexAnnotation] = v
	pod.Spec.Hostname = fmt.Sprintf("%s-%d", job.Name, ix)
	pod.GenerateName = fmt.Sprintf("%s-%d-", job.Name, ix)
	env := corev1.EnvVar{Name: completionIndexEnv, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{
		FieldPath: fmt.Sprintf("metadata.annotations['%s']", batchv1.JobCompletionIndexAnnotation),
	}}}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			has := false
			for _, e := range list[i].Env {
				has = has || e.Name == completionIndexEnv
			}
			if !has {
				list[i].Env = append(list[i].Env, env)
			}
		}
	}
}

// parseIndexes reads a completedIndexes list ("1,3-5,7"), keeping indexes below completions.
func parseIndexes(s string, completions int) map[int]bool {
	out := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		for ix := first; ix <= last && ix < completions; ix++ {
			out[ix] = true
		}
	}
	return out
}

// formatIndexes writes indexes as completedIndexes does: ascending, runs of three or more
// as ranges ("0,1,3-5").
func formatIndexes(set map[int]bool) string {
	ixs := make([]int, 0, len(set))
	for ix := range set {
		ixs = append(ixs, ix)
	}
	sort.Ints(ixs)
	var parts []string
	for i := 0; i < len(ixs); {
		j := i
		for j+1 < len(ixs) && ixs[j+1] == ixs[j]+1 {
			j++
		}
		switch j - i {
		case 0:
			parts = append(parts, strconv.Itoa(ixs[i]))
		case 1:
			parts = append(parts, fmt.Sprintf("%d,%d", ixs[i], ixs[j]))
		default:
			parts = append(parts, fmt.Sprintf("%d-%d", ixs[i], ixs[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
