package ownership

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

var rsKind = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "ReplicaSet"}

func pod(name string, app string, controller types.UID) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name), Labels: map[string]string{"app": app}}}
	if controller != "" {
		yes := true
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "x", UID: controller, Controller: &yes}}
	}
	return p
}

func TestClaim(t *testing.T) {
	now := metav1.Now()
	owner := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "ns", UID: "owner"}} // any metav1.Object
	deleting := pod("deleting", "web", "")
	deleting.DeletionTimestamp = &now
	otherNS := pod("elsewhere", "web", "")
	otherNS.Namespace = "other"
	candidates := []*corev1.Pod{
		pod("mine", "web", "owner"),     // kept
		pod("strayed", "db", "owner"),   // released
		pod("orphan", "web", ""),        // adopted
		pod("unrelated", "db", ""),      // ignored
		pod("theirs", "web", "someone"), // ignored
		deleting,                        // ignored: being deleted
		otherNS,                         // ignored: another namespace
	}
	type call struct {
		name  string
		patch map[string]any
	}
	var calls []call
	patch := func(_ context.Context, name string, data []byte) error {
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("patch for %s is not JSON: %v", name, err)
		}
		calls = append(calls, call{name, m})
		return nil
	}
	adoptChecks := 0
	got, err := Claim(context.Background(), Owner{
		Object: owner, Kind: rsKind, Selector: labels.SelectorFromSet(labels.Set{"app": "web"}),
		CanAdopt: func(context.Context) error { adoptChecks++; return nil },
	}, candidates, patch)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, p.Name)
	}
	if !slices.Equal(names, []string{"mine", "orphan"}) {
		t.Errorf("claimed %v, want [mine orphan]", names)
	}
	if adoptChecks != 1 {
		t.Errorf("CanAdopt called %d times, want once", adoptChecks)
	}
	if len(calls) != 2 || calls[0].name != "strayed" || calls[1].name != "orphan" {
		t.Fatalf("patches %+v, want a release of strayed and an adoption of orphan", calls)
	}
	release := calls[0].patch["metadata"].(map[string]any)
	if release["uid"] != "uid-strayed" {
		t.Errorf("release patch has uid precondition %v", release["uid"])
	}
	if refs := release["ownerReferences"].([]any); refs[0].(map[string]any)["$patch"] != "delete" || refs[0].(map[string]any)["uid"] != "owner" {
		t.Errorf("release patch %v does not delete the owner's reference", release)
	}
	adopt := calls[1].patch["metadata"].(map[string]any)
	ref := adopt["ownerReferences"].([]any)[0].(map[string]any)
	if ref["uid"] != "owner" || ref["controller"] != true || ref["blockOwnerDeletion"] != true || ref["kind"] != "ReplicaSet" || ref["apiVersion"] != "apps/v1" {
		t.Errorf("adoption reference %v, want a blocking controller reference to the ReplicaSet", ref)
	}
}

func TestClaimRefusedAdoptionAndGoneObjects(t *testing.T) {
	owner := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "ns", UID: "owner"}}
	sel := labels.SelectorFromSet(labels.Set{"app": "web"})
	patch := func(_ context.Context, name string, _ []byte) error {
		return apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
	}
	// Adoption refused: the orphan is not claimed, and the error says so.
	got, err := Claim(context.Background(), Owner{Object: owner, Kind: rsKind, Selector: sel,
		CanAdopt: func(context.Context) error { return errors.New("owner is being deleted") },
	}, []*corev1.Pod{pod("orphan", "web", ""), pod("mine", "web", "owner")}, patch)
	if err == nil || len(got) != 1 || got[0].Name != "mine" {
		t.Errorf("claimed %d (err %v), want only mine and an error naming the refused adoption", len(got), err)
	}
	// An orphan gone before its adoption is skipped without an error.
	got, err = Claim(context.Background(), Owner{Object: owner, Kind: rsKind, Selector: sel}, []*corev1.Pod{pod("orphan", "web", "")}, patch)
	if err != nil || len(got) != 0 {
		t.Errorf("claimed %d, err %v; want nothing and no error", len(got), err)
	}
	// A deleting owner neither adopts nor releases.
	now := metav1.Now()
	owner.DeletionTimestamp = &now
	calls := 0
	count := func(context.Context, string, []byte) error { calls++; return nil }
	got, err = Claim(context.Background(), Owner{Object: owner, Kind: rsKind, Selector: sel},
		[]*corev1.Pod{pod("orphan", "web", ""), pod("strayed", "db", "owner"), pod("mine", "web", "owner")}, count)
	if err != nil || calls != 0 || len(got) != 1 {
		t.Errorf("deleting owner: %d patches, %d claimed, err %v; want 0 patches and only mine", calls, len(got), err)
	}
}

func TestRecheck(t *testing.T) {
	owner := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "ns", UID: "u1"}}
	now := metav1.Now()
	tests := []struct {
		name    string
		fresh   *corev1.Pod
		err     error
		wantErr string
	}{
		{name: "same owner", fresh: owner},
		{name: "gone", err: apierrors.NewNotFound(schema.GroupResource{Resource: "replicasets"}, "rs"), wantErr: "recheck ReplicaSet ns/rs"},
		{name: "recreated", fresh: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "ns", UID: "u2"}}, wantErr: "is gone: got uid u2, wanted u1"},
		{name: "being deleted", fresh: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "ns", UID: "u1", DeletionTimestamp: &now}}, wantErr: "is being deleted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Recheck(owner, "ReplicaSet", func(context.Context) (*corev1.Pod, error) { return tc.fresh, tc.err })(context.Background())
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Recheck = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
