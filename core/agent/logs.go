package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/logs"
)

// errBadRequest marks an error that is the client's: the streaming server answers it 400,
// as the kubelet answers an invalid log request or a container without logs.
var errBadRequest = errors.New("bad request")

func badRequestf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}

// message is err's text without the errBadRequest marker, as the client reads it.
func message(err error) string {
	return strings.TrimPrefix(err.Error(), errBadRequest.Error()+": ")
}

// parseLogOptions reads the kubelet's containerLogs query parameters (follow, previous,
// timestamps, tailLines, limitBytes, sinceSeconds, sinceTime) with Kubernetes' checks of
// PodLogOptions.
func parseLogOptions(q url.Values) (*corev1.PodLogOptions, error) {
	opts := &corev1.PodLogOptions{}
	var err error
	flag := func(name string, dst *bool) {
		v := q.Get(name)
		if v == "" || err != nil {
			return
		}
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			err = badRequestf("%s=%q is not a boolean", name, v)
			return
		}
		*dst = b
	}
	number := func(name string) *int64 {
		v := q.Get(name)
		if v == "" || err != nil {
			return nil
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil {
			err = badRequestf("%s=%q is not an integer", name, v)
			return nil
		}
		return &n
	}
	flag("follow", &opts.Follow)
	flag("previous", &opts.Previous)
	flag("timestamps", &opts.Timestamps)
	opts.TailLines = number("tailLines")
	opts.LimitBytes = number("limitBytes")
	opts.SinceSeconds = number("sinceSeconds")
	if v := q.Get("sinceTime"); v != "" && err == nil {
		t, perr := time.Parse(time.RFC3339, v)
		if perr != nil {
			return nil, badRequestf("sinceTime=%q is not an RFC 3339 time", v)
		}
		opts.SinceTime = &metav1.Time{Time: t}
	}
	if err != nil {
		return nil, err
	}
	switch {
	case opts.TailLines != nil && *opts.TailLines < 0:
		return nil, badRequestf("tailLines: Invalid value: %d: must be greater than or equal to 0", *opts.TailLines)
	case opts.LimitBytes != nil && *opts.LimitBytes < 1:
		return nil, badRequestf("limitBytes: Invalid value: %d: must be greater than 0", *opts.LimitBytes)
	case opts.SinceSeconds != nil && opts.SinceTime != nil:
		return nil, badRequestf("at most one of `sinceTime` or `sinceSeconds` may be specified")
	case opts.SinceSeconds != nil && *opts.SinceSeconds < 1:
		return nil, badRequestf("sinceSeconds: Invalid value: %d: must be greater than 0", *opts.SinceSeconds)
	}
	return opts, nil
}

// logContainerID picks the runtime container whose log a request reads, from the pod's
// status, with the kubelet's rules and messages: --previous reads the last terminated
// one; otherwise the running one, else the one that terminated last; a container that
// never started has no logs yet.
func logContainerID(pod *corev1.Pod, container string, previous bool) (string, error) {
	var cs *corev1.ContainerStatus
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for i := range list {
			if list[i].Name == container {
				cs = &list[i]
			}
		}
	}
	if cs == nil {
		return "", badRequestf("container %q in pod %q is waiting to start - no logs yet", container, pod.Name)
	}
	last := cs.LastTerminationState.Terminated
	var id string
	switch {
	case previous:
		if last == nil || last.ContainerID == "" {
			return "", badRequestf("previous terminated container %q in pod %q not found", container, pod.Name)
		}
		id = last.ContainerID
	case cs.State.Running != nil:
		id = cs.ContainerID
	case cs.State.Terminated != nil:
		id = cs.State.Terminated.ContainerID
		if id == "" && last != nil {
			id = last.ContainerID
		}
		if id == "" {
			return "", badRequestf("container %q in pod %q is terminated", container, pod.Name)
		}
	case last != nil:
		if last.ContainerID == "" {
			return "", badRequestf("container %q in pod %q is terminated", container, pod.Name)
		}
		id = last.ContainerID
	case cs.State.Waiting != nil:
		switch cs.State.Waiting.Reason {
		case "ErrImagePull":
			return "", badRequestf("container %q in pod %q is waiting to start: image can't be pulled", container, pod.Name)
		case "ImagePullBackOff":
			return "", badRequestf("container %q in pod %q is waiting to start: trying and failing to pull image", container, pod.Name)
		default:
			return "", badRequestf("container %q in pod %q is waiting to start: %s", container, pod.Name, cs.State.Waiting.Reason)
		}
	default:
		return "", badRequestf("container %q in pod %q is waiting to start - no logs yet", container, pod.Name)
	}
	// The status names it runtime://id; CRI wants the id.
	if _, after, ok := strings.Cut(id, "://"); ok {
		id = after
	}
	return id, nil
}

// serveContainerLogs answers GET /containerLogs/{namespace}/{pod}/{container}: the CRI log
// file of the container, read by the kubelet's own reader (k8s.io/cri-client/pkg/logs),
// which joins partial lines, applies tail, since, timestamps and limitBytes, and with
// follow waits for more until the container stops.
func (s *streamServer) serveContainerLogs(w http.ResponseWriter, r *http.Request) {
	ns, name, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	pod, err := s.a.pods.Pods(ns).Get(name)
	if err != nil {
		http.Error(w, fmt.Sprintf("pod %q does not exist", ns+"/"+name), http.StatusNotFound)
		return
	}
	if !hasContainer(pod, container) {
		http.Error(w, fmt.Sprintf("container %q not found in pod %q", container, ns+"/"+name), http.StatusNotFound)
		return
	}
	opts, err := parseLogOptions(r.URL.Query())
	if err != nil {
		http.Error(w, message(err), http.StatusBadRequest)
		return
	}
	id, err := logContainerID(pod, container, opts.Previous)
	if err != nil {
		http.Error(w, message(err), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	cctx, cancel := context.WithTimeout(ctx, criTimeout)
	st, err := s.a.runtime.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	cancel()
	if err != nil {
		http.Error(w, fmt.Sprintf("container %q in pod %q: %s", container, name, grpcMessage(err)), http.StatusBadRequest)
		return
	}
	path := st.GetStatus().GetLogPath()
	if path == "" {
		http.Error(w, fmt.Sprintf("container %q in pod %q has no log file", container, name), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
	err = logs.ReadLogs(ctx, nil, path, id, logs.NewLogOptions(opts, s.a.now()), &logRuntime{runtime: s.a.runtime}, fw, fw)
	if err != nil && ctx.Err() == nil && !fw.wrote {
		http.Error(w, fmt.Sprintf("read log of container %q in pod %q: %v", container, name, err), http.StatusInternalServerError)
		return
	}
	if err != nil && ctx.Err() == nil {
		s.a.log.Info("container log ended early", "pod", ns+"/"+name, "container", container, "err", err)
	}
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// flushWriter sends each write to the client at once, so that `logs -f` shows lines as
// they come.
type flushWriter struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	wrote bool
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.wrote = true
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.rc.Flush()
}

// logRuntime gives logs.ReadLogs the one runtime call it makes, ContainerStatus, to learn
// whether a followed container still runs. ReadLogs takes the whole CRI RuntimeService
// interface; the embedded interface is nil, and cri-client v0.33's ReadLogs calls nothing
// else (checked in its source; a newer reader calling more would fail loudly in tests).
type logRuntime struct {
	internalapi.RuntimeService
	runtime runtimeapi.RuntimeServiceClient
}

func (l *logRuntime) ContainerStatus(ctx context.Context, id string, verbose bool) (*runtimeapi.ContainerStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	return l.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: verbose})
}
