package apiserver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	upgradeproxy "k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apimachinery/pkg/util/validation/field"
	translator "k8s.io/apiserver/pkg/util/proxy"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// parameterCodec reads subresource options (PodLogOptions, PodExecOptions ...) from query
// parameters with Kubernetes' own conversions, so "stdin=true", repeated "command" and
// "sinceTime" mean what they mean to kube-apiserver.
var parameterCodec = runtime.NewParameterCodec(registry.Scheme)

// maxErrorBody bounds how much of an agent's error answer is read into the Status.
const maxErrorBody = 64 << 10

// nodeClient is how the API server reaches node agents: HTTPS with its client certificate.
type nodeClient struct {
	transport *http.Transport
}

// SetNodeClientTLS gives the handler the TLS configuration (client certificate, agent
// verification) for the node agents it proxies logs, exec, attach and port-forward to;
// without one those subresources answer 503. Call it before serving.
func (h *Handler) SetNodeClientTLS(cfg *tls.Config) {
	h.nodes = &nodeClient{transport: &http.Transport{
		TLSClientConfig: cfg,
		// A node that is down must fail the request, not hang it.
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// agentLocation is the base URL of the agent of the pod's node: its InternalIP and the
// port it published in status.daemonEndpoints.kubeletEndpoint.
func (q *request) agentLocation(pod *corev1.Pod) (*url.URL, error) {
	if q.h.nodes == nil {
		return nil, apierrors.NewServiceUnavailable("the API server has no client certificate for node agents")
	}
	nodeRes, _ := registry.Lookup("", "v1", "nodes")
	o, err := q.h.store.Get(q.ctx(), objectKey(nodeRes, "", pod.Spec.NodeName))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, pod.Spec.NodeName)
	}
	if err != nil {
		return nil, apierrors.NewInternalError(fmt.Errorf("get node %s: %w", pod.Spec.NodeName, err))
	}
	obj, err := decodeStored(nodeRes, o.Value, o.Revision)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	return nodeAgentURL(obj.(*corev1.Node))
}

// nodeAgentURL is where a node's agent serves, from its status.
func nodeAgentURL(node *corev1.Node) (*url.URL, error) {
	port := node.Status.DaemonEndpoints.KubeletEndpoint.Port
	if port <= 0 {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("node %s has no agent endpoint (status.daemonEndpoints.kubeletEndpoint.port is not set): its agent is not running or serves no streams", node.Name))
	}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address != "" {
			return &url.URL{Scheme: "https", Host: net.JoinHostPort(a.Address, strconv.Itoa(int(port)))}, nil
		}
	}
	return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("node %s has no InternalIP address in its status", node.Name))
}

// podContainer is the container a request names, or the pod's only container when it
// names none, with kube-apiserver's errors.
func podContainer(pod *corev1.Pod, container string) (string, error) {
	var names []string
	for _, c := range pod.Spec.InitContainers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		names = append(names, c.Name)
	}
	if container == "" {
		switch len(pod.Spec.Containers) {
		case 1:
			return pod.Spec.Containers[0].Name, nil
		case 0:
			return "", apierrors.NewBadRequest(fmt.Sprintf("a container name must be specified for pod %s", pod.Name))
		default:
			return "", apierrors.NewBadRequest(fmt.Sprintf("a container name must be specified for pod %s, choose one of: %s", pod.Name, names))
		}
	}
	for _, n := range names {
		if n == container {
			return container, nil
		}
	}
	return "", apierrors.NewBadRequest(fmt.Sprintf("container %s is not valid for pod %s", container, pod.Name))
}

// logOptions reads and checks pods/log's query parameters, as ValidatePodLogOptions does.
func logOptions(query url.Values, podName string) (*corev1.PodLogOptions, error) {
	opts := &corev1.PodLogOptions{}
	if err := parameterCodec.DecodeParameters(query, corev1.SchemeGroupVersion, opts); err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	var errs field.ErrorList
	if opts.TailLines != nil && *opts.TailLines < 0 {
		errs = append(errs, field.Invalid(field.NewPath("tailLines"), *opts.TailLines, "must be greater than or equal to 0"))
	}
	if opts.LimitBytes != nil && *opts.LimitBytes < 1 {
		errs = append(errs, field.Invalid(field.NewPath("limitBytes"), *opts.LimitBytes, "must be greater than 0"))
	}
	switch {
	case opts.SinceSeconds != nil && opts.SinceTime != nil:
		errs = append(errs, field.Forbidden(field.NewPath(""), "at most one of `sinceTime` or `sinceSeconds` may be specified"))
	case opts.SinceSeconds != nil && *opts.SinceSeconds < 1:
		errs = append(errs, field.Invalid(field.NewPath("sinceSeconds"), *opts.SinceSeconds, "must be greater than 0"))
	}
	if opts.Stream != nil {
		// The split-streams feature (alpha in 1.33) is off, as it is by default there.
		errs = append(errs, field.Forbidden(field.NewPath("stream"), "may not be specified"))
	}
	if len(errs) > 0 {
		return nil, apierrors.NewInvalid(schema.GroupKind{Kind: "PodLogOptions"}, podName, errs)
	}
	return opts, nil
}

// agentLogQuery is the agent's containerLogs query for opts, as kube-apiserver builds the
// kubelet's.
func agentLogQuery(opts *corev1.PodLogOptions) url.Values {
	params := url.Values{}
	if opts.Follow {
		params.Add("follow", "true")
	}
	if opts.Previous {
		params.Add("previous", "true")
	}
	if opts.Timestamps {
		params.Add("timestamps", "true")
	}
	if opts.SinceSeconds != nil {
		params.Add("sinceSeconds", strconv.FormatInt(*opts.SinceSeconds, 10))
	}
	if opts.SinceTime != nil {
		params.Add("sinceTime", opts.SinceTime.Format(time.RFC3339))
	}
	if opts.TailLines != nil {
		params.Add("tailLines", strconv.FormatInt(*opts.TailLines, 10))
	}
	if opts.LimitBytes != nil {
		params.Add("limitBytes", strconv.FormatInt(*opts.LimitBytes, 10))
	}
	return params
}

// serveLog streams a container's log from the agent of the pod's node.
func (q *request) serveLog(pod *corev1.Pod) {
	opts, err := logOptions(q.r.URL.Query(), pod.Name)
	if err != nil {
		q.fail(err)
		return
	}
	container, err := podContainer(pod, opts.Container)
	if err != nil {
		q.fail(err)
		return
	}
	if pod.Spec.NodeName == "" {
		// kube-apiserver answers an unscheduled pod's log with an empty body.
		q.w.Header().Set("Content-Type", "text/plain")
		q.w.WriteHeader(http.StatusOK)
		return
	}
	loc, err := q.agentLocation(pod)
	if err != nil {
		q.fail(err)
		return
	}
	loc.Path = fmt.Sprintf("/containerLogs/%s/%s/%s", pod.Namespace, pod.Name, container)
	loc.RawQuery = agentLogQuery(opts).Encode()
	req, err := http.NewRequestWithContext(q.ctx(), http.MethodGet, loc.String(), nil)
	if err != nil {
		q.fail(apierrors.NewInternalError(err))
		return
	}
	resp, err := q.h.nodes.transport.RoundTrip(req)
	if err != nil {
		q.fail(apierrors.NewServiceUnavailable(fmt.Sprintf("error dialing backend: %v", err)))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		q.fail(agentError(resp, pod.Name))
		return
	}
	q.w.Header().Set("Content-Type", "text/plain")
	q.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(q.w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := q.w.Write(buf[:n]); err != nil {
				return // the client went away
			}
			_ = rc.Flush()
		}
		if rerr != nil {
			return
		}
	}
}

// agentError turns an agent's error answer into the Status kube-apiserver gives for a
// kubelet's: its text as the message, 400 as BadRequest, 500 as InternalError.
func agentError(resp *http.Response, podName string) error {
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return apierrors.NewInternalError(fmt.Errorf("read the node agent's answer: %w", err))
	}
	text := strings.TrimSpace(string(body))
	switch resp.StatusCode {
	case http.StatusBadRequest:
		return apierrors.NewBadRequest(text)
	case http.StatusInternalServerError:
		return apierrors.NewInternalError(errors.New(text))
	case http.StatusUnauthorized, http.StatusForbidden:
		// The API server's own credentials failed, not the client's: a 401 would make
		// kubectl ask its user to log in.
		return apierrors.NewInternalError(fmt.Errorf("the node agent refused the API server's client certificate (%s): %s", resp.Status, text))
	}
	// Other codes keep their reason, with the agent's text as the message.
	st := apierrors.NewGenericServerResponse(resp.StatusCode, "", schema.GroupResource{Resource: "pods/log"}, podName, text, 0, false)
	st.ErrStatus.Message = text
	return st
}

// streamOptions are exec's and attach's parsed options.
type streamOptions struct {
	stdin, stdout, stderr, tty bool
	command                    []string
}

// remoteCommandOptions reads exec's or attach's query parameters with Kubernetes'
// conversions.
func remoteCommandOptions(subresource string, query url.Values) (streamOptions, string, error) {
	if subresource == "exec" {
		o := &corev1.PodExecOptions{}
		if err := parameterCodec.DecodeParameters(query, corev1.SchemeGroupVersion, o); err != nil {
			return streamOptions{}, "", apierrors.NewBadRequest(err.Error())
		}
		return streamOptions{stdin: o.Stdin, stdout: o.Stdout, stderr: o.Stderr, tty: o.TTY, command: o.Command}, o.Container, nil
	}
	o := &corev1.PodAttachOptions{}
	if err := parameterCodec.DecodeParameters(query, corev1.SchemeGroupVersion, o); err != nil {
		return streamOptions{}, "", apierrors.NewBadRequest(err.Error())
	}
	return streamOptions{stdin: o.Stdin, stdout: o.Stdout, stderr: o.Stderr, tty: o.TTY}, o.Container, nil
}

// agentStreamQuery is the agent's exec or attach query, as kube-apiserver's streamParams
// builds the kubelet's.
func agentStreamQuery(o streamOptions) url.Values {
	params := url.Values{}
	for _, f := range []struct {
		name string
		on   bool
	}{{"stdin", o.stdin}, {"stdout", o.stdout}, {"stderr", o.stderr}, {"tty", o.tty}} {
		if f.on {
			params.Add(f.name, "1")
		}
	}
	for _, c := range o.command {
		params.Add("command", c)
	}
	return params
}

// serveRemoteCommand proxies exec or attach to the agent. kubectl up to 1.29 speaks SPDY,
// which goes through as it is; 1.30 and later speak WebSocket (v5.channel.k8s.io), which
// kube-apiserver's StreamTranslatorHandler turns into SPDY toward the agent, as
// kube-apiserver 1.30+ does toward kubelets.
func (q *request) serveRemoteCommand(pod *corev1.Pod) {
	opts, container, err := remoteCommandOptions(q.info.Subresource, q.r.URL.Query())
	if err != nil {
		q.fail(err)
		return
	}
	if container, err = podContainer(pod, container); err != nil {
		q.fail(err)
		return
	}
	if pod.Spec.NodeName == "" {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("pod %s does not have a host assigned", pod.Name)))
		return
	}
	loc, err := q.agentLocation(pod)
	if err != nil {
		q.fail(err)
		return
	}
	loc.Path = fmt.Sprintf("/%s/%s/%s/%s", q.info.Subresource, pod.Namespace, pod.Name, container)
	loc.RawQuery = agentStreamQuery(opts).Encode()
	if wsstream.IsWebSocketRequestWithStreamCloseProtocol(q.r) {
		h := translator.NewStreamTranslatorHandler(loc, q.h.nodes.transport, 0, translator.Options{
			Stdin: opts.stdin, Stdout: opts.stdout, Stderr: opts.stderr, Tty: opts.tty,
		})
		h.ServeHTTP(q.w, q.r)
		return
	}
	q.upgradeHandler(loc).ServeHTTP(q.w, q.r)
}

// servePortForward proxies port-forward to the agent. kubectl 1.31+ tunnels SPDY through
// a WebSocket, which the tunneling handler unwraps, as kube-apiserver does.
func (q *request) servePortForward(pod *corev1.Pod) {
	opts := &corev1.PodPortForwardOptions{}
	if err := parameterCodec.DecodeParameters(q.r.URL.Query(), corev1.SchemeGroupVersion, opts); err != nil {
		q.fail(apierrors.NewBadRequest(err.Error()))
		return
	}
	if pod.Spec.NodeName == "" {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("pod %s does not have a host assigned", pod.Name)))
		return
	}
	loc, err := q.agentLocation(pod)
	if err != nil {
		q.fail(err)
		return
	}
	loc.Path = fmt.Sprintf("/portForward/%s/%s", pod.Namespace, pod.Name)
	if len(opts.Ports) > 0 {
		ports := make([]string, len(opts.Ports))
		for i, p := range opts.Ports {
			ports[i] = strconv.Itoa(int(p))
		}
		loc.RawQuery = url.Values{"port": {strings.Join(ports, ",")}}.Encode()
	}
	upgrade := q.upgradeHandler(loc)
	if wsstream.IsWebSocketRequestWithTunnelingProtocol(q.r) {
		translator.NewTunnelingHandler(upgrade).ServeHTTP(q.w, q.r)
		return
	}
	upgrade.ServeHTTP(q.w, q.r)
}

// upgradeHandler proxies an upgrade request (SPDY, or an older WebSocket protocol) to
// the agent byte for byte once both sides agree, as kube-apiserver does.
func (q *request) upgradeHandler(loc *url.URL) http.Handler {
	return upgradeproxy.NewUpgradeAwareHandler(loc, q.h.nodes.transport, false, true, upgradeResponder{})
}

// upgradeResponder reports a failed connection to the agent as a Status.
type upgradeResponder struct{}

func (upgradeResponder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	writeError(w, &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusInternalServerError, Reason: metav1.StatusReasonInternalError,
		Message: fmt.Sprintf("error dialing backend: %v", err),
	}})
}
