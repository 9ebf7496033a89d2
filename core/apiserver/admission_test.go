package apiserver

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestAddDefaultTolerations(t *testing.T) {
	secs := func(n int64) *int64 { return &n }
	tests := []struct {
		name string
		in   []corev1.Toleration
		// want maps each NoExecute taint key to the tolerationSeconds the pod ends with
		// (nil: tolerated forever).
		want map[string]*int64
		n    int
	}{
		{
			name: "none: both added",
			want: map[string]*int64{corev1.TaintNodeNotReady: secs(60), corev1.TaintNodeUnreachable: secs(60)},
			n:    2,
		},
		{
			name: "own not-ready toleration kept",
			in:   []corev1.Toleration{{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: secs(5)}},
			want: map[string]*int64{corev1.TaintNodeNotReady: secs(5), corev1.TaintNodeUnreachable: secs(60)},
			n:    2,
		},
		{
			name: "tolerate everything: nothing added",
			in:   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			want: map[string]*int64{corev1.TaintNodeNotReady: nil, corev1.TaintNodeUnreachable: nil},
			n:    1,
		},
		{
			name: "a NoSchedule toleration does not count",
			in:   []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			want: map[string]*int64{corev1.TaintNodeNotReady: secs(60), corev1.TaintNodeUnreachable: secs(60)},
			n:    3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Tolerations: tc.in}}
			addDefaultTolerations(pod, 60)
			if len(pod.Spec.Tolerations) != tc.n {
				t.Fatalf("%d tolerations %+v, want %d", len(pod.Spec.Tolerations), pod.Spec.Tolerations, tc.n)
			}
			for key, want := range tc.want {
				var got *corev1.Toleration
				for i := range pod.Spec.Tolerations {
					if pod.Spec.Tolerations[i].ToleratesTaint(&corev1.Taint{Key: key, Effect: corev1.TaintEffectNoExecute}) {
						got = &pod.Spec.Tolerations[i]
						break
					}
				}
				switch {
				case got == nil:
					t.Errorf("%s is not tolerated", key)
				case (got.TolerationSeconds == nil) != (want == nil) || (want != nil && *got.TolerationSeconds != *want):
					t.Errorf("%s tolerated with seconds %v, want %v", key, got.TolerationSeconds, want)
				}
			}
		})
	}
}
