package apiserver

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestAdmitClaimResize(t *testing.T) {
	yes, no := true, false
	classes := map[string]*storagev1.StorageClass{
		"expandable": {ObjectMeta: metav1.ObjectMeta{Name: "expandable"}, AllowVolumeExpansion: &yes},
		"fixed":      {ObjectMeta: metav1.ObjectMeta{Name: "fixed"}, AllowVolumeExpansion: &no},
		"unset":      {ObjectMeta: metav1.ObjectMeta{Name: "unset"}},
	}
	getClass := func(name string) (*storagev1.StorageClass, error) { return classes[name], nil }
	claim := func(class *string, size string, phase corev1.PersistentVolumeClaimPhase) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{
			Spec: corev1.PersistentVolumeClaimSpec{
				StorageClassName: class,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			},
			Status: corev1.PersistentVolumeClaimStatus{Phase: phase},
		}
	}
	str := func(s string) *string { return &s }
	tests := []struct {
		name     string
		old, new *corev1.PersistentVolumeClaim
		want     string // "" admitted
	}{
		{"grow, bound, expandable class", claim(str("expandable"), "1Gi", corev1.ClaimBound), claim(str("expandable"), "2Gi", corev1.ClaimBound), ""},
		{"same size, anything", claim(nil, "1Gi", corev1.ClaimPending), claim(nil, "1Gi", corev1.ClaimPending), ""},
		{"shrink is validation's to refuse", claim(nil, "2Gi", corev1.ClaimBound), claim(nil, "1Gi", corev1.ClaimBound), ""},
		{"grow, not bound", claim(str("expandable"), "1Gi", corev1.ClaimPending), claim(str("expandable"), "2Gi", corev1.ClaimPending), "Only bound persistent volume claims can be expanded"},
		{"grow, no class", claim(nil, "1Gi", corev1.ClaimBound), claim(nil, "2Gi", corev1.ClaimBound), resizeForbidden},
		{"grow, class forbids", claim(str("fixed"), "1Gi", corev1.ClaimBound), claim(str("fixed"), "2Gi", corev1.ClaimBound), resizeForbidden},
		{"grow, class silent", claim(str("unset"), "1Gi", corev1.ClaimBound), claim(str("unset"), "2Gi", corev1.ClaimBound), resizeForbidden},
		{"grow, class missing", claim(str("gone"), "1Gi", corev1.ClaimBound), claim(str("gone"), "2Gi", corev1.ClaimBound), resizeForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := admitClaimResize(tc.new, tc.old, getClass)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("admitClaimResize = %q, want %q", got, tc.want)
			}
		})
	}
}
