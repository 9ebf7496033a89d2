package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The annotations that script a container. Each is read first with the container's name
// as a suffix (sim.berth.dev/exit-code.app), then without, from the container's own
// annotations and then from its sandbox's (the pod's annotations).
const (
	// AnnotationExitCode replaces the exit code of a container that ends by itself.
	AnnotationExitCode = "sim.berth.dev/exit-code"
	// AnnotationRunSeconds makes the container end after this many seconds (fractions
	// allowed), whatever its command would do; it exits 0 unless AnnotationExitCode or
	// the command's own end before then says otherwise.
	AnnotationRunSeconds = "sim.berth.dev/run-seconds"
	// AnnotationLogs is text the container writes to stdout when it starts, one log line
	// per line.
	AnnotationLogs = "sim.berth.dev/logs"
	// AnnotationSIGTERMExitCode makes the container honour SIGTERM: StopContainer ends it
	// at once with this exit code instead of waiting out the timeout.
	AnnotationSIGTERMExitCode = "sim.berth.dev/sigterm-exit-code"
	// AnnotationCPU is the CPU the container reports using, in millicores (default 1).
	AnnotationCPU = "sim.berth.dev/cpu-millicores"
	// AnnotationMemory is the memory the container reports using, a quantity such as
	// 64Mi (default 4Mi).
	AnnotationMemory = "sim.berth.dev/memory-bytes"
)

// Figures reported for containers that have no annotations saying otherwise.
const (
	defaultCPUMilli = 1
	defaultMemory   = 4 << 20
)

// defaultPath is the PATH of berth's busybox image.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var osHostname = os.Hostname

// outputEvent is output the main command writes at an offset from its start.
type outputEvent struct {
	at     time.Duration
	stream int
	data   []byte
}

// container is a simulated container. While it runs, its timeline (events, end) is
// played by one timer that fires at the next thing due: no goroutine waits for it.
type container struct {
	id         string
	name       string // the reserved name
	sandbox    *sandbox
	cfg        *runtimeapi.ContainerConfig
	imageName  string // for the status: the image's first tag, or the reference it was created from
	imageRef   string // repo digest, else ID
	imageID    string
	logPath    string
	resources  *runtimeapi.LinuxContainerResources
	cpuMilli   uint64
	memory     uint64
	sigterm    *int32 // exit code on SIGTERM, when it honours it
	state      runtimeapi.ContainerState
	createdAt  time.Time
	startedAt  time.Time
	finishedAt time.Time
	exitCode   int32
	reason     string
	message    string

	// The timeline of the running main command.
	events  []outputEvent
	next    int
	ends    bool
	end     time.Duration
	endCode int32
	timer   *time.Timer
	done    chan struct{} // closed when it exits
	partial [2][]byte     // the unfinished last line of stdout and stderr
	// attached receive its output while it runs.
	attached map[*attachment]struct{}
	// httpd is where the container serves HTTP (port 0: it does not).
	httpdPort int32
	httpdDir  string
	// stdinCat is a `cat` reading stdin: attached input is its output. stdinShell is a
	// `sh` reading stdin: attached input lines are run as scripts.
	stdinCat, stdinShell bool
}

// attachment is one Attach stream; output is queued (dropped when the client lags far
// behind) so that a slow client never blocks the runtime.
type attachment struct {
	ch chan outputEvent
}

func (c *container) stopTimer() {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}

// annotation finds a scripting annotation: container-specific first, the container's own
// annotations before the sandbox's.
func (c *container) annotation(key string) (string, bool) {
	specific := key + "." + c.cfg.GetMetadata().GetName()
	for _, k := range []string{specific, key} {
		if v, ok := c.cfg.GetAnnotations()[k]; ok {
			return v, true
		}
		if v, ok := c.sandbox.cfg.GetAnnotations()[k]; ok {
			return v, true
		}
	}
	return "", false
}

// CreateContainer creates a container in a ready sandbox from a present image.
func (r *Runtime) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	cfg := req.GetConfig()
	if cfg.GetMetadata().GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "container config must include metadata with a name")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	sb, _, ok := lookup(r.sandboxes, req.PodSandboxId)
	if !ok {
		return nil, notFound("sandbox", req.PodSandboxId)
	}
	if sb.state != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, status.Errorf(codes.FailedPrecondition, "sandbox container %q is not running", sb.id)
	}
	img := r.findImage(cfg.GetImage().GetImage())
	if img == nil {
		return nil, status.Errorf(codes.NotFound, "failed to resolve image %q: not found", cfg.GetImage().GetImage())
	}
	m := sb.cfg.Metadata
	name := fmt.Sprintf("%s_%s_%s_%s_%d", cfg.Metadata.Name, m.Name, m.Namespace, m.Uid, cfg.Metadata.Attempt)
	if owner, ok := r.names[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "failed to reserve container name %q: name %q is reserved for %q", name, name, owner)
	}
	c := &container{
		id:        newID(),
		name:      name,
		sandbox:   sb,
		cfg:       cfg,
		imageName: cfg.GetImage().GetImage(),
		imageRef:  img.id,
		imageID:   img.id,
		resources: cfg.GetLinux().GetResources(),
		cpuMilli:  defaultCPUMilli,
		memory:    defaultMemory,
		state:     runtimeapi.ContainerState_CONTAINER_CREATED,
		createdAt: r.now(),
	}
	if len(img.repoTags) > 0 {
		c.imageName = img.repoTags[0]
	}
	if len(img.repoDigests) > 0 {
		c.imageRef = img.repoDigests[0]
	}
	if dir, p := sb.cfg.GetLogDirectory(), cfg.GetLogPath(); dir != "" && p != "" {
		c.logPath = filepath.Join(dir, p)
	}
	if err := c.readStatsAnnotations(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if v, ok := c.annotation(AnnotationSIGTERMExitCode); ok {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "annotation %s: %q is not an exit code", AnnotationSIGTERMExitCode, v)
		}
		code := int32(n)
		c.sigterm = &code
	}
	r.names[name] = c.id
	r.containers[c.id] = c
	return &runtimeapi.CreateContainerResponse{ContainerId: c.id}, nil
}

func (c *container) readStatsAnnotations() error {
	if v, ok := c.annotation(AnnotationCPU); ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fmt.Errorf("annotation %s: %q is not a number of millicores", AnnotationCPU, v)
		}
		c.cpuMilli = n
	}
	if v, ok := c.annotation(AnnotationMemory); ok {
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() < 0 {
			return fmt.Errorf("annotation %s: %q is not a quantity of bytes", AnnotationMemory, v)
		}
		c.memory = uint64(q.Value())
	}
	return nil
}

// shell is an interpreter for the container's commands and execs, without clock,
// output or stdin yet.
func (c *container) shell() *shell {
	hostname := c.sandbox.hostname()
	env := []keyValue{{"PATH", defaultPath}, {"HOSTNAME", hostname}}
	set := func(k, v string) {
		for i := range env {
			if env[i].key == k {
				env[i].value = v
				return
			}
		}
		env = append(env, keyValue{k, v})
	}
	for _, kv := range c.cfg.GetEnvs() {
		set(kv.Key, kv.Value)
	}
	if !hasKey(env, "HOME") {
		env = append(env, keyValue{"HOME", "/root"})
	}
	files := fileResolver{hostname: hostname}
	for _, m := range c.cfg.GetMounts() {
		files.mounts = append(files.mounts, mountPoint{containerPath: m.ContainerPath, hostPath: m.HostPath})
	}
	workDir := c.cfg.GetWorkingDir()
	if workDir == "" {
		workDir = "/"
	}
	return &shell{env: env, hostname: hostname, workDir: workDir, files: files}
}

func hasKey(env []keyValue, key string) bool {
	for _, kv := range env {
		if kv.key == key {
			return true
		}
	}
	return false
}

// command is the container's command line: CRI Command then Args.
func (c *container) command() []string {
	return append(append([]string(nil), c.cfg.GetCommand()...), c.cfg.GetArgs()...)
}

// StartContainer starts a created container: its command is interpreted on a virtual
// clock into a timeline of output and exit, which a timer then plays.
func (r *Runtime) StartContainer(_ context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, _, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		return nil, notFound("container", req.ContainerId)
	}
	if c.state != runtimeapi.ContainerState_CONTAINER_CREATED {
		return nil, status.Errorf(codes.FailedPrecondition, "container %q is in %s state, only a created container can be started", c.id, c.state)
	}
	if c.sandbox.state != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, status.Errorf(codes.FailedPrecondition, "sandbox container %q is not running", c.sandbox.id)
	}
	if c.logPath != "" {
		if err := os.MkdirAll(filepath.Dir(c.logPath), 0o755); err != nil {
			return nil, status.Errorf(codes.Internal, "create container log directory: %v", err)
		}
		f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "create container log file: %v", err)
		}
		f.Close()
	}
	if err := r.plan(c); err != nil {
		return nil, err
	}
	c.state = runtimeapi.ContainerState_CONTAINER_RUNNING
	c.startedAt = r.now()
	c.done = make(chan struct{})
	r.advanceLocked(c)
	return &runtimeapi.StartContainerResponse{}, nil
}

// plan interprets the main command on a virtual clock and applies the scripting
// annotations: the container's timeline.
func (r *Runtime) plan(c *container) error {
	vc := &virtualClock{}
	sh := c.shell()
	sh.clock = vc
	c.events, c.next = nil, 0
	if v, ok := c.annotation(AnnotationLogs); ok {
		for _, line := range strings.Split(strings.TrimRight(v, "\n"), "\n") {
			c.events = append(c.events, outputEvent{stream: stdout, data: []byte(line + "\n")})
		}
	}
	sh.out = func(stream int, data []byte) {
		c.events = append(c.events, outputEvent{at: vc.offset, stream: stream, data: data})
	}
	sh.serve = func(port int32, dir string) { c.httpdPort, c.httpdDir = port, dir }
	argv := c.command()
	var code int
	var err error
	daemon := false
	switch {
	case len(argv) == 0:
		// The image's own entrypoint: a server, say; it runs until stopped.
		err = errForever
		daemon = true
	case c.cfg.GetStdin() && len(argv) == 1 && filepath.Base(argv[0]) == "cat":
		c.stdinCat = true
		err = errForever
	case c.cfg.GetStdin() && len(argv) == 1 && filepath.Base(argv[0]) == "sh":
		c.stdinShell = true
		err = errForever
	default:
		code, err = sh.run(argv)
		if err == errNotCommand {
			// A program outside the contract: assume a daemon, as most images run one.
			err = errForever
			daemon = true
		}
	}
	if daemon && c.sigterm == nil {
		// Unlike busybox as PID 1, a daemon dies of SIGTERM (128+15) if nothing else.
		code := int32(143)
		c.sigterm = &code
	}
	c.ends = err == nil
	c.end, c.endCode = vc.offset, int32(code)
	if v, ok := c.annotation(AnnotationRunSeconds); ok {
		secs, perr := strconv.ParseFloat(v, 64)
		if perr != nil || secs < 0 {
			return status.Errorf(codes.InvalidArgument, "annotation %s: %q is not a number of seconds", AnnotationRunSeconds, v)
		}
		d := time.Duration(secs * float64(time.Second))
		if !c.ends || c.end > d {
			c.ends, c.end, c.endCode = true, d, 0
		}
	}
	if v, ok := c.annotation(AnnotationExitCode); ok && c.ends {
		n, perr := strconv.ParseInt(v, 10, 32)
		if perr != nil {
			return status.Errorf(codes.InvalidArgument, "annotation %s: %q is not an exit code", AnnotationExitCode, v)
		}
		c.endCode = int32(n)
	}
	return nil
}

// advanceLocked plays the timeline of c up to now: writes the output that is due, ends
// the container when its end is due, and otherwise sets the timer for what comes next.
func (r *Runtime) advanceLocked(c *container) {
	if c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return
	}
	elapsed := r.now().Sub(c.startedAt)
	for c.next < len(c.events) && c.events[c.next].at <= elapsed && (!c.ends || c.events[c.next].at <= c.end) {
		ev := c.events[c.next]
		c.next++
		r.outputLocked(c, ev.stream, ev.data)
	}
	if c.ends && c.end <= elapsed {
		r.exitLocked(c, c.endCode, c.startedAt.Add(c.end))
		return
	}
	var due time.Duration = -1
	if c.next < len(c.events) {
		due = c.events[c.next].at
	}
	if c.ends && (due < 0 || c.end < due) {
		due = c.end
	}
	c.stopTimer()
	if due < 0 || r.closed {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(due-elapsed, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if c.timer == t {
			c.timer = nil
			r.advanceLocked(c)
		}
	})
	c.timer = t
}

// outputLocked writes output of c to its log file, in the CRI format, and to its
// attached clients.
func (r *Runtime) outputLocked(c *container, stream int, data []byte) {
	for a := range c.attached {
		select {
		case a.ch <- outputEvent{stream: stream, data: data}:
		default:
		}
	}
	buf := append(c.partial[stream], data...)
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 {
		c.partial[stream] = buf
		return
	}
	c.partial[stream] = append([]byte(nil), buf[i+1:]...)
	r.writeLog(c, stream, buf[:i])
}

// writeLog appends lines (without their final newline) to c's log file, each as
// `<RFC3339Nano> stdout|stderr F <line>`. The file is opened for each write, so log
// rotation needs nothing of the runtime.
func (r *Runtime) writeLog(c *container, stream int, lines []byte) {
	if c.logPath == "" {
		return
	}
	name := "stdout"
	if stream == stderr {
		name = "stderr"
	}
	prefix := r.now().Format(time.RFC3339Nano) + " " + name + " F "
	var b bytes.Buffer
	for _, line := range bytes.Split(lines, []byte("\n")) {
		b.WriteString(prefix)
		b.Write(line)
		b.WriteByte('\n')
	}
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		r.log.Error("open container log", "container", c.id, "path", c.logPath, "err", err)
		return
	}
	defer f.Close()
	if _, err := f.Write(b.Bytes()); err != nil {
		r.log.Error("write container log", "container", c.id, "path", c.logPath, "err", err)
	}
}

// exitLocked ends a running container with code at time at.
func (r *Runtime) exitLocked(c *container, code int32, at time.Time) {
	if c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return
	}
	c.stopTimer()
	for stream := range c.partial {
		if len(c.partial[stream]) > 0 {
			r.writeLog(c, stream, c.partial[stream])
			c.partial[stream] = nil
		}
	}
	c.state = runtimeapi.ContainerState_CONTAINER_EXITED
	c.finishedAt = at
	c.exitCode = code
	c.reason = "Completed"
	if code != 0 {
		c.reason = "Error"
	}
	c.events, c.next = nil, 0
	c.httpdPort, c.httpdDir, c.stdinCat, c.stdinShell = 0, "", false, false
	for a := range c.attached {
		close(a.ch)
	}
	c.attached = nil
	close(c.done)
}

// killLocked is SIGKILL: exit code 137.
func (r *Runtime) killLocked(c *container) {
	r.exitLocked(c, 137, r.now())
}

// StopContainer stops a running container as the contract says: containers ignore SIGTERM
// (unless scripted otherwise), so one still running when the timeout is up is killed
// (137). Stopping a stopped or unknown container is not an error.
func (r *Runtime) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	r.mu.Lock()
	c, _, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		r.mu.Unlock()
		return &runtimeapi.StopContainerResponse{}, r.idempotentOK("container", req.ContainerId)
	}
	switch {
	case c.state == runtimeapi.ContainerState_CONTAINER_EXITED:
		r.mu.Unlock()
		return &runtimeapi.StopContainerResponse{}, r.idempotentOK("container", req.ContainerId)
	case c.state != runtimeapi.ContainerState_CONTAINER_RUNNING, r.cfg.Defect == DefectNeverStops:
		r.mu.Unlock()
		return &runtimeapi.StopContainerResponse{}, nil
	case c.sigterm != nil:
		r.exitLocked(c, *c.sigterm, r.now())
		r.mu.Unlock()
		return &runtimeapi.StopContainerResponse{}, nil
	case req.Timeout <= 0:
		r.killLocked(c)
		r.mu.Unlock()
		return &runtimeapi.StopContainerResponse{}, nil
	}
	done := c.done
	r.mu.Unlock()
	t := time.NewTimer(time.Duration(req.Timeout) * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		r.mu.Lock()
		if c.done == done {
			r.killLocked(c)
		}
		r.mu.Unlock()
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// RemoveContainer removes a container, killing it first if it runs. Removing an unknown
// container is not an error.
func (r *Runtime) RemoveContainer(_ context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, id, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		return &runtimeapi.RemoveContainerResponse{}, r.idempotentOK("container", req.ContainerId)
	}
	r.removeContainerLocked(id, c)
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (r *Runtime) removeContainerLocked(id string, c *container) {
	if c.state == runtimeapi.ContainerState_CONTAINER_RUNNING {
		r.killLocked(c)
	}
	c.stopTimer()
	delete(r.names, c.name)
	delete(r.containers, id)
}

// reportedExitCode is the exit code the runtime reports, wrong on purpose with
// DefectWrongExitCode.
func (r *Runtime) reportedExitCode(c *container) int32 {
	if r.cfg.Defect == DefectWrongExitCode && c.state == runtimeapi.ContainerState_CONTAINER_EXITED {
		return c.exitCode + 1
	}
	return c.exitCode
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// ContainerStatus reports a container as containerd does.
func (r *Runtime) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, _, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		return nil, notFound("container", req.ContainerId)
	}
	st := &runtimeapi.ContainerStatus{
		Id:          c.id,
		Metadata:    c.cfg.Metadata,
		State:       c.state,
		CreatedAt:   unixNano(c.createdAt),
		StartedAt:   unixNano(c.startedAt),
		FinishedAt:  unixNano(c.finishedAt),
		ExitCode:    r.reportedExitCode(c),
		Image:       &runtimeapi.ImageSpec{Image: c.imageName, UserSpecifiedImage: c.cfg.GetImage().GetUserSpecifiedImage(), Annotations: c.cfg.GetImage().GetAnnotations()},
		ImageRef:    c.imageRef,
		ImageId:     c.imageID,
		Reason:      c.reason,
		Message:     c.message,
		Labels:      copyMap(c.cfg.Labels),
		Annotations: copyMap(c.cfg.Annotations),
		Mounts:      c.cfg.Mounts,
		LogPath:     c.logPath,
		User:        &runtimeapi.ContainerUser{Linux: &runtimeapi.LinuxContainerUser{Uid: c.cfg.GetLinux().GetSecurityContext().GetRunAsUser().GetValue()}},
	}
	if c.resources != nil {
		st.Resources = &runtimeapi.ContainerResources{Linux: c.resources}
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: st}
	if req.Verbose {
		info, err := json.Marshal(map[string]any{
			"sandboxID": c.sandbox.id,
			"command":   c.command(),
			"config":    c.cfg,
			"runtime":   RuntimeName,
		})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode container info: %v", err)
		}
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

// ListContainers lists the containers that match the filter's ID, state, sandbox and
// labels.
func (r *Runtime) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*runtimeapi.Container
	for _, c := range r.filterContainersLocked(f.GetId(), f.GetPodSandboxId(), f.GetLabelSelector()) {
		if f.GetState() != nil && c.state != f.State.State {
			continue
		}
		out = append(out, &runtimeapi.Container{
			Id: c.id, PodSandboxId: c.sandbox.id, Metadata: c.cfg.Metadata,
			Image:    &runtimeapi.ImageSpec{Image: c.imageName, UserSpecifiedImage: c.cfg.GetImage().GetUserSpecifiedImage()},
			ImageRef: c.imageRef, ImageId: c.imageID, State: c.state, CreatedAt: unixNano(c.createdAt),
			Labels: copyMap(c.cfg.Labels), Annotations: copyMap(c.cfg.Annotations),
		})
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

// filterContainersLocked is the containers with the ID (or its prefix), in the sandbox
// (or its prefix), with the labels; empty filters match all.
func (r *Runtime) filterContainersLocked(id, sandboxID string, labels map[string]string) []*container {
	var sb *sandbox
	if sandboxID != "" {
		var ok bool
		if sb, _, ok = lookup(r.sandboxes, sandboxID); !ok {
			return nil
		}
	}
	var candidates []*container
	if id != "" {
		if c, _, ok := lookup(r.containers, id); ok {
			candidates = append(candidates, c)
		}
	} else {
		candidates = make([]*container, 0, len(r.containers))
		for _, c := range r.containers {
			candidates = append(candidates, c)
		}
	}
	out := candidates[:0]
	for _, c := range candidates {
		if (sb == nil || c.sandbox == sb) && matchLabels(c.cfg.Labels, labels) {
			out = append(out, c)
		}
	}
	return out
}

// UpdateContainerResources records the container's new resources, which its status then
// shows.
func (r *Runtime) UpdateContainerResources(_ context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, _, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		return nil, notFound("container", req.ContainerId)
	}
	if c.state == runtimeapi.ContainerState_CONTAINER_EXITED {
		return nil, status.Errorf(codes.FailedPrecondition, "container %q is in %s state", c.id, c.state)
	}
	if req.Linux != nil {
		c.resources = req.Linux
	}
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// ReopenContainerLog creates the log file anew for a running container; since the file is
// opened for every write, nothing else needs reopening.
func (r *Runtime) ReopenContainerLog(_ context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, _, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		return nil, notFound("container", req.ContainerId)
	}
	if c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return nil, status.Errorf(codes.FailedPrecondition, "container %q is not running", c.id)
	}
	if c.logPath != "" {
		// The file was renamed away by log rotation: make the new one at once, as
		// containerd does, rather than at the next write.
		f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "reopen container log %s: %v", c.logPath, err)
		}
		f.Close()
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}
