package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// The labels the kubelet puts on sandboxes and containers. berth uses the same, so that
// crictl and other tools recognise its pods, and so that the agent finds its pods again in
// the runtime after a restart.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
)

// podNetwork is what the sandbox tells about the pod's network, for the downward API.
type podNetwork struct {
	PodIPs []string
	HostIP string
}

// objectSource reads the ConfigMaps and Secrets that env and envFrom refer to.
type objectSource interface {
	ConfigMap(namespace, name string) (*corev1.ConfigMap, error)
	Secret(namespace, name string) (*corev1.Secret, error)
}

// serviceSource lists a namespace's Services, for the service environment variables; an
// objectSource that is one gives containers those variables.
type serviceSource interface {
	Services(namespace string) ([]*corev1.Service, error)
}

// configError is a container that cannot be configured because of what the user wrote
// (a missing ConfigMap key, an unknown field path): the kubelet's
// CreateContainerConfigError.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func configErrorf(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// podLogDir is where the runtime writes the logs of pod's containers, as the kubelet lays
// them out under /var/log/pods.
func podLogDir(dataDir string, pod *corev1.Pod) string {
	return filepath.Join(dataDir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
}

// sandboxConfig is the CRI sandbox of pod: its identity and labels (the agent's own labels
// win over the pod's), hostname, log directory, host ports and namespaces.
func sandboxConfig(pod *corev1.Pod, attempt uint32, logDir string) *runtimeapi.PodSandboxConfig {
	labels := map[string]string{}
	for k, v := range pod.Labels {
		labels[k] = v
	}
	for k, v := range podLabels(pod) {
		labels[k] = v
	}
	annotations := map[string]string{}
	for k, v := range pod.Annotations {
		annotations[k] = v
	}
	hostname := pod.Name
	if pod.Spec.Hostname != "" {
		hostname = pod.Spec.Hostname
	}
	if pod.Spec.HostNetwork {
		hostname = "" // the node's own
	}
	if len(hostname) > 63 {
		hostname = strings.TrimRight(hostname[:63], "-.")
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name: pod.Name, Namespace: pod.Namespace, Uid: string(pod.UID), Attempt: attempt,
		},
		Hostname:     hostname,
		LogDirectory: logDir,
		Labels:       labels,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: namespaceOptions(pod),
			},
		},
	}
	if sc := pod.Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			cfg.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{Value: *sc.RunAsUser}
		}
		if sc.RunAsGroup != nil {
			cfg.Linux.SecurityContext.RunAsGroup = &runtimeapi.Int64Value{Value: *sc.RunAsGroup}
		}
		cfg.Linux.SecurityContext.SupplementalGroups = sc.SupplementalGroups
	}
	// Like the kubelet, only ports with a hostPort become port mappings.
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort <= 0 {
				continue
			}
			cfg.PortMappings = append(cfg.PortMappings, &runtimeapi.PortMapping{
				Protocol:      protocol(p.Protocol),
				ContainerPort: p.ContainerPort,
				HostPort:      p.HostPort,
				HostIp:        p.HostIP,
			})
		}
	}
	return cfg
}

func podLabels(pod *corev1.Pod) map[string]string {
	return map[string]string{
		labelPodName:      pod.Name,
		labelPodNamespace: pod.Namespace,
		labelPodUID:       string(pod.UID),
	}
}

func namespaceOptions(pod *corev1.Pod) *runtimeapi.NamespaceOption {
	ns := &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD,
		Pid:     runtimeapi.NamespaceMode_CONTAINER,
		Ipc:     runtimeapi.NamespaceMode_POD,
	}
	if pod.Spec.HostNetwork {
		ns.Network = runtimeapi.NamespaceMode_NODE
	}
	if pod.Spec.HostPID {
		ns.Pid = runtimeapi.NamespaceMode_NODE
	} else if pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace {
		ns.Pid = runtimeapi.NamespaceMode_POD
	}
	if pod.Spec.HostIPC {
		ns.Ipc = runtimeapi.NamespaceMode_NODE
	}
	return ns
}

func protocol(p corev1.Protocol) runtimeapi.Protocol {
	switch p {
	case corev1.ProtocolUDP:
		return runtimeapi.Protocol_UDP
	case corev1.ProtocolSCTP:
		return runtimeapi.Protocol_SCTP
	}
	return runtimeapi.Protocol_TCP
}

// containerConfig is the CRI container for c of pod: command and args with $(VAR)
// references expanded as the kubelet does, env (envFrom, then env, valueFrom resolved),
// working dir, log path, resources, security context and the mounts of its volumeMounts
// (vols are the pod's volumes that are set up). image is the image reference to run (the
// image ID once it is pulled).
func containerConfig(pod *corev1.Pod, c *corev1.Container, attempt uint32, image string, net podNetwork, objects objectSource, vols podVolumes) (*runtimeapi.ContainerConfig, error) {
	env, err := containerEnv(pod, c, net, objects)
	if err != nil {
		return nil, err
	}
	mapping := map[string]string{}
	envs := make([]*runtimeapi.KeyValue, 0, len(env))
	for _, e := range env {
		mapping[e.name] = e.value
		envs = append(envs, &runtimeapi.KeyValue{Key: e.name, Value: e.value})
	}
	mounts, err := containerMounts(pod, c, vols, mapping)
	if err != nil {
		return nil, err
	}
	// Block volumes (CSI, volumeMode Block) reach the container as devices (csivolumes.go).
	devices, err := containerDevices(c, vols)
	if err != nil {
		return nil, err
	}
	mappingFunc := expansion.MappingFuncFor(mapping)
	expand := func(in []string) []string {
		if in == nil {
			return nil
		}
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = expansion.Expand(s, mappingFunc)
		}
		return out
	}
	labels := podLabels(pod)
	labels[labelContainerName] = c.Name
	cfg := &runtimeapi.ContainerConfig{
		Metadata:    &runtimeapi.ContainerMetadata{Name: c.Name, Attempt: attempt},
		Image:       &runtimeapi.ImageSpec{Image: image, UserSpecifiedImage: c.Image},
		Command:     expand(c.Command),
		Args:        expand(c.Args),
		WorkingDir:  c.WorkingDir,
		Envs:        envs,
		Mounts:      mounts,
		Devices:     devices,
		Labels:      labels,
		Annotations: map[string]string{"io.kubernetes.container.restartCount": strconv.Itoa(int(attempt))},
		LogPath:     filepath.Join(c.Name, strconv.Itoa(int(attempt))+".log"),
		Stdin:       c.Stdin,
		StdinOnce:   c.StdinOnce,
		Tty:         c.TTY,
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources:       linuxResources(c.Resources),
			SecurityContext: containerSecurityContext(pod, c),
		},
	}
	return cfg, nil
}

type envVar struct{ name, value string }

// containerEnv resolves c's environment in the kubelet's order: envFrom sources first,
// then env entries, later ones overriding earlier ones, each env value expanded against
// the variables defined before it.
func containerEnv(pod *corev1.Pod, c *corev1.Container, net podNetwork, objects objectSource) ([]envVar, error) {
	var svcEnv []envVar
	if services, ok := objects.(serviceSource); ok {
		var err error
		if svcEnv, err = serviceEnv(pod, services); err != nil {
			return nil, err
		}
	}
	var out []envVar
	index := map[string]int{}
	set := func(name, value string) {
		if i, ok := index[name]; ok {
			out[i].value = value
			return
		}
		index[name] = len(out)
		out = append(out, envVar{name, value})
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := objects.ConfigMap(pod.Namespace, from.ConfigMapRef.Name)
			if err != nil {
				if optional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, configErrorf("configmap %q not found", from.ConfigMapRef.Name)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := objects.Secret(pod.Namespace, from.SecretRef.Name)
			if err != nil {
				if optional(from.SecretRef.Optional) {
					continue
				}
				return nil, configErrorf("secret %q not found", from.SecretRef.Name)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			// The service variables are there to be referred to, below the container's own.
			mapping := map[string]string{}
			for _, v := range svcEnv {
				mapping[v.name] = v.value
			}
			for _, v := range out {
				mapping[v.name] = v.value
			}
			set(e.Name, expansion.Expand(e.Value, expansion.MappingFuncFor(mapping)))
			continue
		}
		v, skip, err := envValueFrom(pod, c, e, net, objects)
		if err != nil {
			return nil, err
		}
		if !skip {
			set(e.Name, v)
		}
	}
	// As the kubelet: the service variables come last, unless the container set them.
	for _, v := range svcEnv {
		if _, ok := index[v.name]; !ok {
			set(v.name, v.value)
		}
	}
	return out, nil
}

// masterServiceNamespace holds the kubernetes Service, whose variables every pod gets.
const masterServiceNamespace = "default"

// serviceEnv is the kubelet's service environment of pod, sorted by name: for each
// Service of the pod's namespace (none with enableServiceLinks: false) and for the
// kubernetes Service of default, NAME_SERVICE_HOST, NAME_SERVICE_PORT,
// NAME_SERVICE_PORT_PORTNAME and the docker-link variables (NAME_PORT=tcp://ip:port,
// NAME_PORT_80_TCP, _PROTO, _PORT, _ADDR). Services without a ClusterIP (headless,
// ExternalName) give none. As with the kubelet, these are the Services that exist when the
// container is created: a Service made after it is not seen until a restart.
func serviceEnv(pod *corev1.Pod, objects serviceSource) ([]envVar, error) {
	byName := map[string]*corev1.Service{}
	master, err := objects.Services(masterServiceNamespace)
	if err != nil {
		return nil, fmt.Errorf("list services of %s for the service environment: %w", masterServiceNamespace, err)
	}
	for _, svc := range master {
		if svc.Name == "kubernetes" {
			byName[svc.Name] = svc
		}
	}
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		own := master
		if pod.Namespace != masterServiceNamespace {
			if own, err = objects.Services(pod.Namespace); err != nil {
				return nil, fmt.Errorf("list services of %s for the service environment: %w", pod.Namespace, err)
			}
		}
		for _, svc := range own {
			byName[svc.Name] = svc // the namespace's own kubernetes Service wins, as in the kubelet
		}
	}
	services := make([]*corev1.Service, 0, len(byName))
	for _, svc := range byName {
		services = append(services, svc)
	}
	sort.Slice(services, func(i, j int) bool { return services[i].Name < services[j].Name })
	var out []envVar
	for _, svc := range services {
		out = append(out, serviceVars(svc)...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// serviceVars are one Service's variables, as the kubelet's envvars.FromServices makes
// them. (That package is not used: it links Kubernetes' internal API types into the
// agent, against ADR 0010's footprint.)
func serviceVars(svc *corev1.Service) []envVar {
	ip := svc.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone || len(svc.Spec.Ports) == 0 {
		return nil // headless and ExternalName Services have no address to give
	}
	prefix := strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_"))
	out := []envVar{
		{prefix + "_SERVICE_HOST", ip},
		{prefix + "_SERVICE_PORT", strconv.Itoa(int(svc.Spec.Ports[0].Port))},
	}
	for _, p := range svc.Spec.Ports {
		if p.Name != "" {
			out = append(out, envVar{prefix + "_SERVICE_PORT_" + strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port))})
		}
	}
	// The docker-link variables.
	for i, p := range svc.Spec.Ports {
		proto := string(p.Protocol)
		if proto == "" {
			proto = string(corev1.ProtocolTCP)
		}
		port := strconv.Itoa(int(p.Port))
		url := strings.ToLower(proto) + "://" + net.JoinHostPort(ip, port)
		if i == 0 {
			out = append(out, envVar{prefix + "_PORT", url})
		}
		pp := prefix + "_PORT_" + port + "_" + strings.ToUpper(proto)
		out = append(out, envVar{pp, url}, envVar{pp + "_PROTO", strings.ToLower(proto)},
			envVar{pp + "_PORT", port}, envVar{pp + "_ADDR", ip})
	}
	return out
}

// Services lists a namespace's Services from the agent's informer: no API call per pod.
func (o *apiObjects) Services(namespace string) ([]*corev1.Service, error) {
	if o.a.services == nil {
		return nil, nil
	}
	return o.a.services.Services(namespace).List(labels.Everything())
}

func optional(b *bool) bool { return b != nil && *b }

// envValueFrom resolves one valueFrom; skip is true for an optional reference that is
// missing, which leaves the variable unset as in Kubernetes.
func envValueFrom(pod *corev1.Pod, c *corev1.Container, e corev1.EnvVar, net podNetwork, objects objectSource) (value string, skip bool, err error) {
	from := e.ValueFrom
	switch {
	case from.FieldRef != nil:
		v, err := podFieldValue(pod, from.FieldRef.FieldPath, net)
		return v, false, err
	case from.ResourceFieldRef != nil:
		v, err := resourceFieldValue(c, from.ResourceFieldRef)
		return v, false, err
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := objects.ConfigMap(pod.Namespace, ref.Name)
		if err != nil {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, configErrorf("configmap %q not found", ref.Name)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, configErrorf("couldn't find key %s in ConfigMap %s/%s", ref.Key, pod.Namespace, ref.Name)
		}
		return v, false, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		s, err := objects.Secret(pod.Namespace, ref.Name)
		if err != nil {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, configErrorf("secret %q not found", ref.Name)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, configErrorf("couldn't find key %s in Secret %s/%s", ref.Key, pod.Namespace, ref.Name)
		}
		return string(v), false, nil
	}
	return "", false, configErrorf("env %s: valueFrom names no source", e.Name)
}

// podFieldValue is the downward API's value of a pod field path.
func podFieldValue(pod *corev1.Pod, path string, net podNetwork) (string, error) {
	if key, ok := subscript(path, "metadata.labels"); ok {
		return pod.Labels[key], nil
	}
	if key, ok := subscript(path, "metadata.annotations"); ok {
		return pod.Annotations[key], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return net.HostIP, nil
	case "status.podIP":
		if len(net.PodIPs) > 0 {
			return net.PodIPs[0], nil
		}
		return "", nil
	case "status.podIPs":
		return strings.Join(net.PodIPs, ","), nil
	}
	return "", configErrorf("unsupported fieldRef path %q", path)
}

// subscript parses prefix['key'].
func subscript(path, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(path, prefix+"['")
	if !ok || !strings.HasSuffix(rest, "']") {
		return "", false
	}
	return strings.TrimSuffix(rest, "']"), true
}

// resourceFieldValue is the downward API's value of a container resource, rounded up to
// the divisor as Kubernetes does. An unset limit reads as 0 here (the kubelet would give
// the node's allocatable).
func resourceFieldValue(c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		return "", configErrorf("resourceFieldRef names container %q; only the container's own resources are supported", ref.ContainerName)
	}
	var q resource.Quantity
	switch ref.Resource {
	case "limits.cpu":
		q = c.Resources.Limits[corev1.ResourceCPU]
	case "requests.cpu":
		q = c.Resources.Requests[corev1.ResourceCPU]
	case "limits.memory":
		q = c.Resources.Limits[corev1.ResourceMemory]
	case "requests.memory":
		q = c.Resources.Requests[corev1.ResourceMemory]
	case "limits.ephemeral-storage":
		q = c.Resources.Limits[corev1.ResourceEphemeralStorage]
	case "requests.ephemeral-storage":
		q = c.Resources.Requests[corev1.ResourceEphemeralStorage]
	default:
		return "", configErrorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if strings.HasSuffix(ref.Resource, "cpu") {
		v := (q.MilliValue() + divisor.MilliValue() - 1) / divisor.MilliValue()
		return strconv.FormatInt(v, 10), nil
	}
	v := (q.Value() + divisor.Value() - 1) / divisor.Value()
	return strconv.FormatInt(v, 10), nil
}

// linuxResources maps requests and limits to cgroup settings as the kubelet does: CPU
// shares from the request, a CFS quota from the limit, a memory limit.
func linuxResources(r corev1.ResourceRequirements) *runtimeapi.LinuxContainerResources {
	out := &runtimeapi.LinuxContainerResources{CpuShares: 2}
	if q, ok := r.Requests[corev1.ResourceCPU]; ok {
		out.CpuShares = max(q.MilliValue()*1024/1000, 2)
	} else if q, ok := r.Limits[corev1.ResourceCPU]; ok {
		out.CpuShares = max(q.MilliValue()*1024/1000, 2)
	}
	if q, ok := r.Limits[corev1.ResourceCPU]; ok {
		out.CpuPeriod = 100000
		out.CpuQuota = max(q.MilliValue()*100000/1000, 1000)
	}
	if q, ok := r.Limits[corev1.ResourceMemory]; ok {
		out.MemoryLimitInBytes = q.Value()
	}
	return out
}

// containerSecurityContext is the CRI security context of c: the pod's namespaces and
// the basics of its securityContext (the container's fields win over the pod's).
func containerSecurityContext(pod *corev1.Pod, c *corev1.Container) *runtimeapi.LinuxContainerSecurityContext {
	out := &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: namespaceOptions(pod)}
	if psc := pod.Spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil {
			out.RunAsUser = &runtimeapi.Int64Value{Value: *psc.RunAsUser}
		}
		if psc.RunAsGroup != nil {
			out.RunAsGroup = &runtimeapi.Int64Value{Value: *psc.RunAsGroup}
		}
		out.SupplementalGroups = psc.SupplementalGroups
	}
	sc := c.SecurityContext
	if sc == nil {
		return out
	}
	if sc.RunAsUser != nil {
		out.RunAsUser = &runtimeapi.Int64Value{Value: *sc.RunAsUser}
	}
	if sc.RunAsGroup != nil {
		out.RunAsGroup = &runtimeapi.Int64Value{Value: *sc.RunAsGroup}
	}
	if sc.Privileged != nil {
		out.Privileged = *sc.Privileged
	}
	if sc.ReadOnlyRootFilesystem != nil {
		out.ReadonlyRootfs = *sc.ReadOnlyRootFilesystem
	}
	if sc.AllowPrivilegeEscalation != nil {
		out.NoNewPrivs = !*sc.AllowPrivilegeEscalation
	}
	if caps := sc.Capabilities; caps != nil {
		out.Capabilities = &runtimeapi.Capability{}
		for _, c := range caps.Add {
			out.Capabilities.AddCapabilities = append(out.Capabilities.AddCapabilities, string(c))
		}
		for _, c := range caps.Drop {
			out.Capabilities.DropCapabilities = append(out.Capabilities.DropCapabilities, string(c))
		}
	}
	return out
}

// DNS limits of Kubernetes' validation, which the kubelet applies to the resolv.conf it
// forms: at most 3 nameservers, 32 search domains of at most 253 characters each, and a
// search line of at most 2048 characters.
const (
	maxDNSNameservers     = 3
	maxDNSSearchPaths     = 32
	maxDNSSearchListChars = 2048
	maxDNSSearchLength    = 253
)

// dnsSettings are the node's DNS settings that pods' resolv.conf is made from.
type dnsSettings struct {
	// clusterDNS are the cluster's nameservers (the kube-dns Service's ClusterIP); empty:
	// ClusterFirst pods get the host's configuration, as with a kubelet without clusterDNS.
	clusterDNS []string
	// domain is the cluster domain (cluster.local).
	domain string
	// host is the node's resolv.conf.
	host resolvConf
}

// resolvConf is what a resolv.conf says.
type resolvConf struct {
	servers, searches, options []string
}

// readResolvConf reads a resolv.conf file.
func readResolvConf(path string) (resolvConf, error) {
	f, err := os.Open(path)
	if err != nil {
		return resolvConf{}, fmt.Errorf("read resolver configuration: %w", err)
	}
	defer f.Close()
	rc, err := parseResolvConf(io.LimitReader(f, 1<<20))
	if err != nil {
		return resolvConf{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return rc, nil
}

// parseResolvConf reads nameserver, search and options lines as the kubelet does: the
// last search line wins, "." and trailing dots are dropped, a later option replaces an
// earlier one of the same name.
func parseResolvConf(r io.Reader) (resolvConf, error) {
	var rc resolvConf
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) >= 2 {
				rc.servers = append(rc.servers, f[1])
			}
		case "search":
			rc.searches = nil
			for _, d := range f[1:] {
				if d != "." {
					rc.searches = append(rc.searches, strings.TrimSuffix(d, "."))
				}
			}
		case "options":
			rc.options = mergeOptions(rc.options, f[1:])
		}
	}
	return rc, sc.Err()
}

// mergeOptions is opts with each of more set: replacing the option of the same name in
// place, or appended.
func mergeOptions(opts, more []string) []string {
	out := append([]string(nil), opts...)
	for _, o := range more {
		name, _, _ := strings.Cut(o, ":")
		replaced := false
		for i, e := range out {
			if n, _, _ := strings.Cut(e, ":"); n == name {
				out[i], replaced = o, true
				break
			}
		}
		if !replaced {
			out = append(out, o)
		}
	}
	return out
}

// podDNSConfig is the resolver configuration of pod's sandbox, formed as the kubelet forms
// it from the pod's dnsPolicy and dnsConfig:
//
//   - ClusterFirst (the default), and ClusterFirstWithHostNet: the cluster's nameservers,
//     search <ns>.svc.<domain> svc.<domain> <domain> and then the host's search domains,
//     options ndots:5. A hostNetwork pod with ClusterFirst gets Default instead, and so
//     does every ClusterFirst pod when the node has no cluster DNS (with a warning).
//   - Default: the host's resolv.conf.
//   - None: nothing but the pod's dnsConfig.
//
// The pod's dnsConfig is then added: its nameservers and searches after the policy's
// (duplicates dropped), its options replacing those of the same name. The result is cut
// to the limits (3 nameservers; 32 search domains, none longer than 253 characters, 2048
// characters in all); warnings say what was cut, for an event.
func podDNSConfig(pod *corev1.Pod, s dnsSettings) (*runtimeapi.DNSConfig, []dnsWarning) {
	var warnings []dnsWarning
	cfg := &runtimeapi.DNSConfig{
		Servers:  append([]string(nil), s.host.servers...),
		Searches: append([]string(nil), s.host.searches...),
		Options:  append([]string(nil), s.host.options...),
	}
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	cluster := false
	switch policy {
	case corev1.DNSNone:
		cfg = &runtimeapi.DNSConfig{}
	case corev1.DNSClusterFirstWithHostNet:
		cluster = true
	case corev1.DNSClusterFirst:
		cluster = !pod.Spec.HostNetwork
	case corev1.DNSDefault:
	default:
		warnings = append(warnings, dnsWarning{"DNSConfigForming", fmt.Sprintf("invalid dnsPolicy %q: using ClusterFirst", policy)})
		cluster = true
	}
	if cluster {
		if len(s.clusterDNS) > 0 {
			cfg.Servers = append([]string(nil), s.clusterDNS...)
			if s.domain != "" {
				cfg.Searches = dedupe(append([]string{pod.Namespace + ".svc." + s.domain, "svc." + s.domain, s.domain}, cfg.Searches...))
			}
			cfg.Options = []string{"ndots:5"}
		} else {
			warnings = append(warnings, dnsWarning{"MissingClusterDNS", fmt.Sprintf("the node has no cluster DNS configured (--cluster-dns) and cannot run the pod with the %q policy: using %q", corev1.DNSClusterFirst, corev1.DNSDefault)})
		}
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		cfg.Servers = dedupe(append(cfg.Servers, dc.Nameservers...))
		cfg.Searches = dedupe(append(cfg.Searches, dc.Searches...))
		var opts []string
		for _, o := range dc.Options {
			if o.Value != nil && *o.Value != "" {
				opts = append(opts, o.Name+":"+*o.Value)
			} else {
				opts = append(opts, o.Name)
			}
		}
		cfg.Options = mergeOptions(cfg.Options, opts)
	}
	if len(cfg.Servers) > maxDNSNameservers {
		cfg.Servers = cfg.Servers[:maxDNSNameservers]
		warnings = append(warnings, dnsWarning{"DNSConfigForming", "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: " + strings.Join(cfg.Servers, " ")})
	}
	if searches, cut := fitSearches(cfg.Searches); cut {
		cfg.Searches = searches
		warnings = append(warnings, dnsWarning{"DNSConfigForming", "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: " + strings.Join(searches, " ")})
	}
	return cfg, warnings
}

// dnsWarning is a warning event about a pod's DNS configuration.
type dnsWarning struct{ reason, message string }

// podDNS is the DNS configuration of pod's sandbox, with a warning event on the pod, once,
// for what could not be applied.
func (a *Agent) podDNS(pod *corev1.Pod) *runtimeapi.DNSConfig {
	cfg, warnings := podDNSConfig(pod, a.dns)
	if len(warnings) == 0 || a.recorder == nil {
		return cfg
	}
	st := a.state(pod.UID)
	a.mu.Lock()
	warned := st.dnsWarned
	st.dnsWarned = true
	a.mu.Unlock()
	if !warned {
		for _, w := range warnings {
			a.recorder.Event(pod, corev1.EventTypeWarning, w.reason, w.message)
		}
	}
	return cfg
}

// fitSearches cuts a search list to the limits: the first 32 domains, without those
// longer than 253 characters (some resolvers abort on them), then domains from the end
// until the line fits 2048 characters.
func fitSearches(searches []string) ([]string, bool) {
	cut := false
	if len(searches) > maxDNSSearchPaths {
		searches, cut = searches[:maxDNSSearchPaths], true
	}
	kept := searches[:0:0]
	for _, d := range searches {
		if len(d) > maxDNSSearchLength {
			cut = true
			continue
		}
		kept = append(kept, d)
	}
	for len(kept) > 0 && len(strings.Join(kept, " ")) > maxDNSSearchListChars {
		kept, cut = kept[:len(kept)-1], true
	}
	return kept, cut
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := in[:0:0]
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
