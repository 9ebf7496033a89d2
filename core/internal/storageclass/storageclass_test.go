package storageclass

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDefaultIsTheNewestMarkedClass(t *testing.T) {
	at := func(s int) metav1.Time { return metav1.NewTime(time.Unix(int64(s), 0)) }
	mk := func(name string, ts int, ann string) *storagev1.StorageClass {
		sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: at(ts)}}
		if ann != "" {
			sc.Annotations = map[string]string{ann: "true"}
		}
		return sc
	}
	for _, tc := range []struct {
		name    string
		classes []*storagev1.StorageClass
		want    string
	}{
		{"none marked", []*storagev1.StorageClass{mk("a", 1, "")}, ""},
		{"one marked", []*storagev1.StorageClass{mk("a", 1, ""), mk("b", 2, IsDefaultAnnotation)}, "b"},
		{"newest wins", []*storagev1.StorageClass{mk("old", 1, IsDefaultAnnotation), mk("new", 5, BetaIsDefaultAnnotation)}, "new"},
		{"tie by name", []*storagev1.StorageClass{mk("z", 3, IsDefaultAnnotation), mk("m", 3, IsDefaultAnnotation)}, "m"},
	} {
		got := Default(tc.classes)
		name := ""
		if got != nil {
			name = got.Name
		}
		if name != tc.want {
			t.Errorf("%s: Default = %q, want %q", tc.name, name, tc.want)
		}
	}
}

func TestTakesDefault(t *testing.T) {
	empty := ""
	for _, tc := range []struct {
		name  string
		spec  corev1.PersistentVolumeClaimSpec
		annot map[string]string
		want  bool
	}{
		{"no class", corev1.PersistentVolumeClaimSpec{}, nil, true},
		{"empty class means none", corev1.PersistentVolumeClaimSpec{StorageClassName: &empty}, nil, false},
		{"beta annotation names a class", corev1.PersistentVolumeClaimSpec{}, map[string]string{corev1.BetaStorageClassAnnotation: "x"}, false},
		{"selector wants a pre-made volume", corev1.PersistentVolumeClaimSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"vol": "mysql"}}}, nil, false},
		{"empty selector selects nothing in particular", corev1.PersistentVolumeClaimSpec{Selector: &metav1.LabelSelector{}}, nil, true},
		{"volumeName pre-binds", corev1.PersistentVolumeClaimSpec{VolumeName: "app-pv"}, nil, false},
	} {
		claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Annotations: tc.annot}, Spec: tc.spec}
		if got := TakesDefault(claim); got != tc.want {
			t.Errorf("%s: TakesDefault = %t, want %t", tc.name, got, tc.want)
		}
	}
}
