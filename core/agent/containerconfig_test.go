package agent

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
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

func TestParseResolvConf(t *testing.T) {
	rc, err := parseResolvConf(strings.NewReader("# host\nnameserver 192.0.2.53\nsearch old.example\nsearch corp.example. .\noptions ndots:2 timeout:1\noptions ndots:3\nnameserver 192.0.2.54\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := resolvConf{servers: []string{"192.0.2.53", "192.0.2.54"}, searches: []string{"corp.example"}, options: []string{"ndots:3", "timeout:1"}}
	if !reflect.DeepEqual(rc, want) {
		t.Errorf("parsed %+v, want %+v", rc, want)
	}
}

func TestPodDNSConfig(t *testing.T) {
	host := resolvConf{servers: []string{"192.0.2.53"}, searches: []string{"corp.example"}, options: []string{"timeout:1"}}
	node := dnsSettings{clusterDNS: []string{"10.96.0.10"}, domain: "cluster.local", host: host}
	clusterSearch := []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"}
	long := strings.Repeat("a", 254)
	for _, tc := range []struct {
		name     string
		policy   corev1.DNSPolicy
		hostNet  bool
		config   *corev1.PodDNSConfig
		node     dnsSettings
		want     *runtimeapi.DNSConfig
		warnings int
	}{
		{"ClusterFirst", corev1.DNSClusterFirst, false, nil, node,
			&runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: clusterSearch, Options: []string{"ndots:5"}}, 0},
		{"empty policy is ClusterFirst", "", false, nil, node,
			&runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: clusterSearch, Options: []string{"ndots:5"}}, 0},
		{"ClusterFirst on the host network is Default", corev1.DNSClusterFirst, true, nil, node,
			&runtimeapi.DNSConfig{Servers: host.servers, Searches: host.searches, Options: host.options}, 0},
		{"ClusterFirstWithHostNet", corev1.DNSClusterFirstWithHostNet, true, nil, node,
			&runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: clusterSearch, Options: []string{"ndots:5"}}, 0},
		{"Default", corev1.DNSDefault, false, nil, node,
			&runtimeapi.DNSConfig{Servers: host.servers, Searches: host.searches, Options: host.options}, 0},
		{"ClusterFirst without cluster DNS is Default", corev1.DNSClusterFirst, false, nil, dnsSettings{domain: "cluster.local", host: host},
			&runtimeapi.DNSConfig{Servers: host.servers, Searches: host.searches, Options: host.options}, 1},
		{"None", corev1.DNSNone, false, &corev1.PodDNSConfig{
			Nameservers: []string{"192.0.2.1"}, Searches: []string{"my.example"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}, {Name: "edns0"}}}, node,
			&runtimeapi.DNSConfig{Servers: []string{"192.0.2.1"}, Searches: []string{"my.example"}, Options: []string{"ndots:2", "edns0"}}, 0},
		{"ClusterFirst with dnsConfig", corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{
			Nameservers: []string{"192.0.2.1", "10.96.0.10"}, Searches: []string{"my.example", "cluster.local"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("1")}, {Name: "single-request"}}}, node,
			&runtimeapi.DNSConfig{Servers: []string{"10.96.0.10", "192.0.2.1"}, Searches: append(append([]string{}, clusterSearch...), "my.example"),
				Options: []string{"ndots:1", "single-request"}}, 0},
		{"at most 3 nameservers", corev1.DNSDefault, false, &corev1.PodDNSConfig{Nameservers: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}}, node,
			&runtimeapi.DNSConfig{Servers: []string{"192.0.2.53", "192.0.2.1", "192.0.2.2"}, Searches: host.searches, Options: host.options}, 1},
		{"search domains over 253 characters are dropped", corev1.DNSNone, false, &corev1.PodDNSConfig{Searches: []string{"a.example", long, "b.example"}}, node,
			&runtimeapi.DNSConfig{Searches: []string{"a.example", "b.example"}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			pod.Spec.DNSPolicy, pod.Spec.HostNetwork, pod.Spec.DNSConfig = tc.policy, tc.hostNet, tc.config
			got, warnings := podDNSConfig(pod, tc.node)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
			if len(warnings) != tc.warnings {
				t.Errorf("warnings %v, want %d", warnings, tc.warnings)
			}
		})
	}
}

func TestFitSearches(t *testing.T) {
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("d%02d.example", i))
	}
	got, cut := fitSearches(many)
	if !cut || len(got) != 32 || got[31] != "d31.example" {
		t.Errorf("40 domains: %d kept (cut %v), want the first 32", len(got), cut)
	}
	var wide []string
	for i := range 20 {
		wide = append(wide, fmt.Sprintf("%03d.%s", i, strings.Repeat("x", 200)))
	}
	got, cut = fitSearches(wide)
	if line := strings.Join(got, " "); !cut || len(line) > maxDNSSearchListChars || len(got) != 9 { // 10 of 204 characters make 2049
		t.Errorf("wide domains: %d kept, line of %d characters (cut %v)", len(got), len(line), cut)
	}
}

// fakeServices is an objectSource with Services.
type fakeServices struct {
	fakeObjects
	services []*corev1.Service
}

func (f fakeServices) Services(ns string) ([]*corev1.Service, error) {
	var out []*corev1.Service
	for _, s := range f.services {
		if s.Namespace == ns {
			out = append(out, s)
		}
	}
	return out, nil
}

func TestServiceEnv(t *testing.T) {
	svc := func(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
	}
	objects := fakeServices{services: []*corev1.Service{
		svc("default", "kubernetes", "10.96.0.1", corev1.ServicePort{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}),
		svc("default", "other", "10.96.0.2", corev1.ServicePort{Port: 1, Protocol: corev1.ProtocolTCP}),
		svc("shop", "web-app", "10.96.0.50",
			corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
			corev1.ServicePort{Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP}),
		svc("shop", "headless", corev1.ClusterIPNone, corev1.ServicePort{Port: 80}),
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}},
	}}
	kubernetesVars := []string{
		"KUBERNETES_PORT=tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
		"KUBERNETES_PORT_443_TCP_PORT=443",
		"KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_SERVICE_HOST=10.96.0.1",
		"KUBERNETES_SERVICE_PORT=443",
		"KUBERNETES_SERVICE_PORT_HTTPS=443",
	}
	webVars := []string{
		"WEB_APP_PORT=tcp://10.96.0.50:80",
		"WEB_APP_PORT_53_UDP=udp://10.96.0.50:53",
		"WEB_APP_PORT_53_UDP_ADDR=10.96.0.50",
		"WEB_APP_PORT_53_UDP_PORT=53",
		"WEB_APP_PORT_53_UDP_PROTO=udp",
		"WEB_APP_PORT_80_TCP=tcp://10.96.0.50:80",
		"WEB_APP_PORT_80_TCP_ADDR=10.96.0.50",
		"WEB_APP_PORT_80_TCP_PORT=80",
		"WEB_APP_PORT_80_TCP_PROTO=tcp",
		"WEB_APP_SERVICE_HOST=10.96.0.50",
		"WEB_APP_SERVICE_PORT=80",
		"WEB_APP_SERVICE_PORT_DNS_UDP=53",
		"WEB_APP_SERVICE_PORT_HTTP=80",
	}
	render := func(env []*runtimeapi.KeyValue) []string {
		var out []string
		for _, kv := range env {
			out = append(out, kv.Key+"="+kv.Value)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		links *bool
		env   []corev1.EnvVar
		want  []string
	}{
		{"links", nil, nil, append(append([]string{}, kubernetesVars...), webVars...)},
		{"enableServiceLinks false", ptr.To(false), nil, kubernetesVars},
		{"the container's env wins and may refer to them", ptr.To(false),
			[]corev1.EnvVar{{Name: "KUBERNETES_SERVICE_PORT", Value: "8443"}, {Name: "API", Value: "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}},
			append([]string{"KUBERNETES_SERVICE_PORT=8443", "API=10.96.0.1:8443"}, slices.DeleteFunc(slices.Clone(kubernetesVars), func(s string) bool {
				return strings.HasPrefix(s, "KUBERNETES_SERVICE_PORT=")
			})...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			pod.Spec.EnableServiceLinks = tc.links
			c := &pod.Spec.Containers[0]
			c.Env = tc.env
			cfg, err := containerConfig(pod, c, 0, "img", podNetwork{}, objects, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := render(cfg.Envs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("env\n got  %q\n want %q", got, tc.want)
			}
		})
	}
}
