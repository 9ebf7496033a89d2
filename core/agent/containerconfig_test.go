package agent

import (
	"errors"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
)

// fakeObjects serves ConfigMaps and Secrets from maps.
type fakeObjects struct {
	configMaps map[string]map[string]string
	secrets    map[string]map[string][]byte
}

func (f fakeObjects) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	data, ok := f.configMaps[name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
	}
	return &corev1.ConfigMap{Data: data}, nil
}

func (f fakeObjects) Secret(ns, name string) (*corev1.Secret, error) {
	data, ok := f.secrets[name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
	}
	return &corev1.Secret{Data: data}, nil
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web", Namespace: "shop", UID: "uid-1",
			Labels:      map[string]string{"app": "web", labelPodName: "spoofed"},
			Annotations: map[string]string{"team": "blue"},
		},
		Spec: corev1.PodSpec{
			NodeName:           "node-1",
			ServiceAccountName: "default",
			Containers: []corev1.Container{{
				Name: "main", Image: "berth.local/busybox:1.35",
				Ports: []corev1.ContainerPort{
					{ContainerPort: 8080},
					{ContainerPort: 53, HostPort: 5353, Protocol: corev1.ProtocolUDP},
				},
			}},
		},
	}
}

func TestSandboxConfig(t *testing.T) {
	pod := testPod()
	cfg := sandboxConfig(pod, 2, "/data/pods/shop_web_uid-1")
	if m := cfg.Metadata; m.Name != "web" || m.Namespace != "shop" || m.Uid != "uid-1" || m.Attempt != 2 {
		t.Errorf("metadata %+v", m)
	}
	if cfg.Hostname != "web" || cfg.LogDirectory != "/data/pods/shop_web_uid-1" {
		t.Errorf("hostname %q, log dir %q", cfg.Hostname, cfg.LogDirectory)
	}
	if cfg.Labels[labelPodName] != "web" || cfg.Labels["app"] != "web" || cfg.Labels[labelPodUID] != "uid-1" {
		t.Errorf("labels %v: the agent's labels must win over the pod's", cfg.Labels)
	}
	if cfg.Annotations["team"] != "blue" {
		t.Errorf("annotations %v", cfg.Annotations)
	}
	want := []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_UDP, ContainerPort: 53, HostPort: 5353}}
	if !reflect.DeepEqual(cfg.PortMappings, want) {
		t.Errorf("port mappings %v, want only the hostPort one %v", cfg.PortMappings, want)
	}
	if ns := cfg.Linux.SecurityContext.NamespaceOptions; ns.Network != runtimeapi.NamespaceMode_POD {
		t.Errorf("namespaces %v", ns)
	}

	pod.Spec.HostNetwork = true
	pod.Spec.Hostname = "custom"
	cfg = sandboxConfig(pod, 0, "")
	if cfg.Linux.SecurityContext.NamespaceOptions.Network != runtimeapi.NamespaceMode_NODE || cfg.Hostname != "" {
		t.Errorf("hostNetwork pod: network %v, hostname %q", cfg.Linux.SecurityContext.NamespaceOptions.Network, cfg.Hostname)
	}
}

func TestContainerConfigEnvAndCommand(t *testing.T) {
	pod := testPod()
	c := &pod.Spec.Containers[0]
	c.Command = []string{"sh", "-c"}
	c.Args = []string{"echo $(GREETING) $(UNDEFINED) $$(ESCAPED)"}
	c.WorkingDir = "/tmp"
	c.EnvFrom = []corev1.EnvFromSource{
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}},
		{Prefix: "S_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}},
	}
	c.Env = []corev1.EnvVar{
		{Name: "MODE", Value: "override"},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
		{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "level"}}},
		{Name: "OPTIONAL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "x", Optional: ptr.To(true)}}},
		{Name: "GREETING", Value: "hello $(POD_NAME) in $(POD_NS)"},
	}
	objects := fakeObjects{
		configMaps: map[string]map[string]string{"settings": {"MODE": "from-configmap", "level": "debug"}},
		secrets:    map[string]map[string][]byte{"creds": {"TOKEN": []byte("s3cret")}},
	}
	cfg, err := containerConfig(pod, c, 3, "sha256:abc", podNetwork{PodIPs: []string{"10.244.0.7"}, HostIP: "192.0.2.2"}, objects, nil)
	if err != nil {
		t.Fatal(err)
	}
	var env [][2]string
	for _, kv := range cfg.Envs {
		env = append(env, [2]string{kv.Key, kv.Value})
	}
	wantEnv := [][2]string{
		{"MODE", "override"}, {"level", "debug"}, {"S_TOKEN", "s3cret"},
		{"POD_NAME", "web"}, {"POD_NS", "shop"}, {"POD_IP", "10.244.0.7"}, {"NODE", "node-1"}, {"APP", "web"},
		{"LEVEL", "debug"}, {"GREETING", "hello web in shop"},
	}
	if !reflect.DeepEqual(env, wantEnv) {
		t.Errorf("env\n got %v\nwant %v", env, wantEnv)
	}
	if want := []string{"echo hello web in shop $(UNDEFINED) $(ESCAPED)"}; !reflect.DeepEqual(cfg.Args, want) {
		t.Errorf("args %q, want %q", cfg.Args, want)
	}
	if !reflect.DeepEqual(cfg.Command, []string{"sh", "-c"}) || cfg.WorkingDir != "/tmp" {
		t.Errorf("command %q, working dir %q", cfg.Command, cfg.WorkingDir)
	}
	if cfg.Metadata.Name != "main" || cfg.Metadata.Attempt != 3 || cfg.Image.Image != "sha256:abc" || cfg.LogPath != "main/3.log" {
		t.Errorf("metadata %+v, image %q, log path %q", cfg.Metadata, cfg.Image.Image, cfg.LogPath)
	}
	if cfg.Labels[labelContainerName] != "main" || cfg.Labels[labelPodUID] != "uid-1" {
		t.Errorf("labels %v", cfg.Labels)
	}
}

func TestContainerConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		env  corev1.EnvVar
		want string
	}{
		{"missing configmap", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}}, `configmap "nope" not found`},
		{"missing key", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "k"}}}, "couldn't find key k in ConfigMap shop/settings"},
		{"missing secret", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "k"}}}, `secret "creds" not found`},
		{"unknown field", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{
			FieldPath: "spec.bogus"}}}, `unsupported fieldRef path "spec.bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := testPod()
			pod.Spec.Containers[0].Env = []corev1.EnvVar{tt.env}
			objects := fakeObjects{configMaps: map[string]map[string]string{"settings": {}}}
			_, err := containerConfig(pod, &pod.Spec.Containers[0], 0, "img", podNetwork{}, objects, nil)
			var ce *configError
			if !errors.As(err, &ce) || err.Error() != tt.want {
				t.Errorf("error %v, want the configuration error %q", err, tt.want)
			}
		})
	}
}

func TestContainerConfigResourcesAndSecurity(t *testing.T) {
	pod := testPod()
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](3000)}
	c := &pod.Spec.Containers[0]
	c.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
	}
	c.SecurityContext = &corev1.SecurityContext{
		RunAsUser: ptr.To[int64](2000), ReadOnlyRootFilesystem: ptr.To(true), Privileged: ptr.To(false),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}},
	}
	c.Env = []corev1.EnvVar{{Name: "MEM", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{
		Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}}}
	cfg, err := containerConfig(pod, c, 0, "img", podNetwork{}, fakeObjects{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Linux.Resources
	if r.CpuShares != 256 || r.CpuQuota != 50000 || r.CpuPeriod != 100000 || r.MemoryLimitInBytes != 64<<20 {
		t.Errorf("resources %+v", r)
	}
	sc := cfg.Linux.SecurityContext
	if sc.RunAsUser.GetValue() != 2000 || sc.RunAsGroup.GetValue() != 3000 || !sc.ReadonlyRootfs || sc.Privileged || !sc.NoNewPrivs {
		t.Errorf("security context %+v", sc)
	}
	if !reflect.DeepEqual(sc.Capabilities.AddCapabilities, []string{"NET_ADMIN"}) || !reflect.DeepEqual(sc.Capabilities.DropCapabilities, []string{"ALL"}) {
		t.Errorf("capabilities %+v", sc.Capabilities)
	}
	if len(cfg.Envs) != 1 || cfg.Envs[0].Value != "64" {
		t.Errorf("resourceFieldRef env %v, want MEM=64", cfg.Envs)
	}
}
