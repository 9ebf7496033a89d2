package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// run executes a storage tool and returns its output; the error names the command and
// carries what it printed, since mkfs/losetup explain their failures only there.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// createImage makes a sparse file of size bytes; it fails when the file exists.
func createImage(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("size image %s to %d bytes: %w", path, size, err)
	}
	return f.Close()
}

// growImage extends an image to size bytes; the new part is a hole.
func growImage(path string, size int64) error {
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("grow image to %d bytes: %w", size, err)
	}
	return nil
}

// hasFilesystem tells whether dev (a loop device or an image file) carries a file system
// or any other signature blkid knows: a volume is formatted on its first staging, and
// only when blkid finds nothing on it, as Kubernetes' SafeFormatAndMount decides.
func hasFilesystem(ctx context.Context, dev string) (bool, error) {
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", dev).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 2:
		// blkid's "nothing found": an empty volume.
		return false, nil
	default:
		return false, fmt.Errorf("blkid -p %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
}

// makeExt4 puts an empty ext4 file system on an image file. Lazy initialisation keeps mkfs
// fast and the file sparse; no blocks are reserved for root, so df shows the whole volume.
func makeExt4(ctx context.Context, path string) error {
	_, err := run(ctx, "mkfs.ext4", "-F", "-q", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", path)
	return err
}

// resizeExt4Offline grows the file system of an unmounted image to the image's size
// (resize2fs insists on a forced check first).
func resizeExt4Offline(ctx context.Context, path string) error {
	if err := fsck(ctx, path, true); err != nil {
		return err
	}
	_, err := run(ctx, "resize2fs", path)
	return err
}

// fsck repairs what e2fsck can repair without asking (-p). Exit codes 1 and 2 mean errors
// were corrected, which is fine for mounting.
func fsck(ctx context.Context, path string, force bool) error {
	args := []string{"-p"}
	if force {
		args = append(args, "-f")
	}
	out, err := run(ctx, "e2fsck", append(args, path)...)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() <= 2 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check file system: %w (%s)", err, strings.TrimSpace(out))
	}
	return nil
}

// copyImage copies src to dst, skipping holes so that a sparse image stays sparse, and
// writes through a temporary file so that dst never exists half copied.
func copyImage(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	fail := func(err error) error {
		_ = out.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("copy image %s to %s: %w", src, dst, err)
	}
	if err := out.Truncate(info.Size()); err != nil {
		return fail(err)
	}
	fd := int(in.Fd())
	size := info.Size()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fail(fmt.Errorf("seek data: %w", err))
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fail(fmt.Errorf("seek hole: %w", err))
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return fail(err)
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return fail(err)
		}
		if _, err := io.CopyBuffer(out, io.LimitReader(in, hole-data), buf); err != nil {
			return fail(err)
		}
		off = hole
	}
	if err := out.Sync(); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("copy image to %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("copy image to %s: %w", dst, err)
	}
	return nil
}

// loops attaches and finds loop devices. Attaching is serialised: two `losetup -f` at once
// may pick the same free device.
type loops struct {
	mu sync.Mutex
}

// find returns the loop device an image is attached to, or "" when none is. It asks
// `losetup -j`, which matches by device and inode, so a renamed path does not fool it.
func (l *loops) find(ctx context.Context, image string) (string, error) {
	out, err := run(ctx, "losetup", "-j", image)
	if err != nil {
		return "", fmt.Errorf("find loop device of %s: %w", image, err)
	}
	for _, line := range strings.Split(out, "\n") {
		dev, _, ok := strings.Cut(line, ":")
		if ok && strings.HasPrefix(dev, "/dev/loop") {
			return dev, nil
		}
	}
	return "", nil
}

// attach returns the loop device of an image, attaching one when none is (losetup -f asks
// /dev/loop-control for a free device and so creates loop8, loop9 ... as needed).
func (l *loops) attach(ctx context.Context, image string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.find(ctx, image)
	if err != nil || dev != "" {
		return dev, err
	}
	out, err := run(ctx, "losetup", "-f", "--show", image)
	if err != nil {
		return "", fmt.Errorf("attach loop device to %s: %w", image, err)
	}
	dev = strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("attach loop device to %s: losetup printed %q", image, dev)
	}
	return dev, nil
}

// detach detaches every loop device of an image (normally one). `losetup -d` of a device
// that something still holds open (a just-finished unmount, a udev probe) only marks it
// for autoclear, so the device may stay a moment: it is looked for again with a growing
// pause, for up to about 5 s.
func (l *loops) detach(ctx context.Context, image string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	pause := 20 * time.Millisecond
	for deadline := time.Now().Add(5 * time.Second); ; {
		dev, err := l.find(ctx, image)
		if err != nil || dev == "" {
			return err
		}
		if err := detachDevice(ctx, dev); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach loop devices of %s: %s still attached 5 s after losetup -d (something holds it open)", image, dev)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("detach loop devices of %s: %w", image, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

func detachDevice(ctx context.Context, dev string) error {
	out, err := run(ctx, "losetup", "-d", dev)
	if err != nil && !strings.Contains(out, "No such device") {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// refresh makes a loop device see its file's new size after growth (losetup -c).
func refresh(ctx context.Context, dev string) error {
	if _, err := run(ctx, "losetup", "-c", dev); err != nil {
		return fmt.Errorf("refresh size of %s: %w", dev, err)
	}
	return nil
}

// backingFile reads which file a loop device is attached to, from sysfs.
func backingFile(dev string) (string, error) {
	data, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return "", fmt.Errorf("read backing file of %s: %w", dev, err)
	}
	return strings.TrimSpace(string(data)), nil
}

// ext4Size reads the size of the ext4 file system on dev (block count times block size)
// from its superblock.
func ext4Size(ctx context.Context, dev string) (int64, error) {
	out, err := run(ctx, "dumpe2fs", "-h", dev)
	if err != nil {
		return 0, err
	}
	var count, size int64
	for _, line := range strings.Split(out, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "Block count":
			_, err = fmt.Sscan(strings.TrimSpace(val), &count)
		case "Block size":
			_, err = fmt.Sscan(strings.TrimSpace(val), &size)
		}
		if err != nil {
			return 0, fmt.Errorf("parse dumpe2fs of %s: %q: %w", dev, line, err)
		}
	}
	if count == 0 || size == 0 {
		return 0, fmt.Errorf("dumpe2fs of %s printed no block count or size", dev)
	}
	return count * size, nil
}

// needsGrowth says whether the file system on dev is smaller than the image behind it, by
// more than the slack of a partial block group.
func needsGrowth(ctx context.Context, dev, image string) (bool, error) {
	info, err := os.Stat(image)
	if err != nil {
		return false, fmt.Errorf("size of image: %w", err)
	}
	fs, err := ext4Size(ctx, dev)
	if err != nil {
		return false, err
	}
	return info.Size()-fs > 64<<10, nil
}

// canResizeOnline says whether this process may grow a mounted ext4 file system: the kernel
// asks for CAP_SYS_RESOURCE, which some containers and VMs withhold even from root.
func canResizeOnline() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &caps); err != nil {
				return false
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}
