package job

import (
	"fmt"
	"slices"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// failureVerdict is what a Job's podFailurePolicy makes of one failed pod.
type failureVerdict struct {
	// failJob, when set, is the message of the Failed condition a FailJob rule calls for.
	failJob string
	// count says whether the failure counts against backoffLimit (an Ignore rule says no).
	count bool
	// action is the matching rule's action, empty when none matched.
	action batchv1.PodFailurePolicyAction
}

// matchFailurePolicy applies the first rule that matches the failed pod, on its containers'
// exit codes or on its conditions; with no policy or no matching rule the failure counts.
// FailIndex rules (backoffLimitPerIndex) are not supported and never match.
func matchFailurePolicy(policy *batchv1.PodFailurePolicy, pod *corev1.Pod) failureVerdict {
	if policy == nil {
		return failureVerdict{count: true}
	}
	for i, rule := range policy.Rules {
		var failJob string
		switch {
		case rule.OnExitCodes != nil:
			cs := matchExitCodes(&pod.Status, rule.OnExitCodes)
			if cs == nil {
				continue
			}
			failJob = fmt.Sprintf("Container %s for pod %s/%s failed with exit code %v matching %v rule at index %d",
				cs.Name, pod.Namespace, pod.Name, cs.State.Terminated.ExitCode, rule.Action, i)
		case rule.OnPodConditions != nil:
			cond := matchPodConditions(&pod.Status, rule.OnPodConditions)
			if cond == nil {
				continue
			}
			failJob = fmt.Sprintf("Pod %s/%s has condition %v matching %v rule at index %d",
				pod.Namespace, pod.Name, cond.Type, rule.Action, i)
		default:
			continue
		}
		switch rule.Action {
		case batchv1.PodFailurePolicyActionIgnore:
			return failureVerdict{count: false, action: rule.Action}
		case batchv1.PodFailurePolicyActionCount:
			return failureVerdict{count: true, action: rule.Action}
		case batchv1.PodFailurePolicyActionFailJob:
			return failureVerdict{failJob: failJob, count: true, action: rule.Action}
		}
	}
	return failureVerdict{count: true}
}

// matchExitCodes returns the first terminated container (regular, then init) whose non-zero
// exit code satisfies the requirement.
func matchExitCodes(status *corev1.PodStatus, req *batchv1.PodFailurePolicyOnExitCodesRequirement) *corev1.ContainerStatus {
	for _, list := range [][]corev1.ContainerStatus{status.ContainerStatuses, status.InitContainerStatuses} {
		for i := range list {
			cs := &list[i]
			if cs.State.Terminated == nil || cs.State.Terminated.ExitCode == 0 {
				continue
			}
			if req.ContainerName != nil && *req.ContainerName != cs.Name {
				continue
			}
			in := slices.Contains(req.Values, cs.State.Terminated.ExitCode)
			if (req.Operator == batchv1.PodFailurePolicyOnExitCodesOpIn && in) ||
				(req.Operator == batchv1.PodFailurePolicyOnExitCodesOpNotIn && !in) {
				return cs
			}
		}
	}
	return nil
}

func matchPodConditions(status *corev1.PodStatus, patterns []batchv1.PodFailurePolicyOnPodConditionsPattern) *corev1.PodCondition {
	for i := range status.Conditions {
		for _, p := range patterns {
			if status.Conditions[i].Type == p.Type && status.Conditions[i].Status == p.Status {
				return &status.Conditions[i]
			}
		}
	}
	return nil
}

// onlyReplaceFailed says whether a pod is replaced only once it has failed, not as soon as it
// is being deleted: podReplacementPolicy Failed, implied by a podFailurePolicy.
func onlyReplaceFailed(job *batchv1.Job) bool {
	if p := job.Spec.PodReplacementPolicy; p != nil && *p == batchv1.Failed {
		return true
	}
	return job.Spec.PodFailurePolicy != nil
}

// isFailed says whether a pod counts as failed: Failed, or being deleted before it finished
// (an orphan may never reach Failed) unless the Job waits for pods to fail.
func isFailed(p *corev1.Pod, job *batchv1.Job) bool {
	if p.Status.Phase == corev1.PodFailed {
		return true
	}
	if onlyReplaceFailed(job) {
		return false
	}
	return p.DeletionTimestamp != nil && p.Status.Phase != corev1.PodSucceeded
}
