package cni

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsDir is where named network namespaces are bind-mounted, as iproute2 does.
const netnsDir = "/var/run/netns"

// newNetNS makes the named network namespace /var/run/netns/name and returns its path.
// Making one moves the calling thread into it, so the thread is locked and moved back;
// a thread that cannot be moved back stays locked, which makes Go retire it with its
// goroutine rather than run other code in the wrong namespace.
func newNetNS(name string) (string, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return "", fmt.Errorf("network namespace of this thread: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		if serr := netns.Set(orig); serr != nil {
			return "", fmt.Errorf("make network namespace %s: %w (and return from it: %v)", name, err, serr)
		}
		runtime.UnlockOSThread()
		return "", fmt.Errorf("make network namespace %s: %w", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		return "", fmt.Errorf("return from network namespace %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return filepath.Join(netnsDir, name), nil
}

// deleteNetNS unmounts and removes a namespace made by newNetNS; one already gone is fine.
func deleteNetNS(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil {
		return fmt.Errorf("delete network namespace %s: %w", name, err)
	}
	return nil
}

// nsView looks into a namespace through a netlink socket opened in it, without moving
// any thread.
type nsView struct {
	h *netlink.Handle
}

func openNS(path string) (*nsView, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in network namespace %s: %w", path, err)
	}
	return &nsView{h: h}, nil
}

// hostView looks at the host's own namespace.
func hostView() (*nsView, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &nsView{h: h}, nil
}

func (v *nsView) close() { v.h.Close() }

// link returns the link named name, nil when there is none.
func (v *nsView) link(name string) (netlink.Link, error) {
	l, err := v.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	return l, nil
}

// addrs returns the addresses of a link, both families.
func (v *nsView) addrs(l netlink.Link) ([]netlink.Addr, error) {
	as, err := v.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	return as, nil
}

// routes returns the routes of the main table, both families.
func (v *nsView) routes() ([]netlink.Route, error) {
	rs, err := v.h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	return rs, nil
}

// hasAddr reports whether the link has the address with the same prefix length.
func hasAddr(as []netlink.Addr, want *net.IPNet) bool {
	for _, a := range as {
		if a.IPNet != nil && a.IP.Equal(want.IP) {
			wo, _ := want.Mask.Size()
			ao, _ := a.Mask.Size()
			if wo == ao {
				return true
			}
		}
	}
	return false
}

// isDefault reports whether dst is a default route (nil in older kernels' replies).
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0 && dst.IP.IsUnspecified()
}

// hasRoute reports whether a route to dst (through gw, when gw is set) is there.
func hasRoute(rs []netlink.Route, dst *net.IPNet, gw net.IP) bool {
	for _, r := range rs {
		same := false
		switch {
		case isDefault(dst):
			same = isDefault(r.Dst) && (r.Dst != nil || (r.Gw == nil || (r.Gw.To4() != nil) == (dst.IP.To4() != nil)))
			if r.Dst != nil {
				same = same && (r.Dst.IP.To4() != nil) == (dst.IP.To4() != nil)
			}
		case r.Dst != nil:
			wo, _ := dst.Mask.Size()
			ro, _ := r.Dst.Mask.Size()
			same = wo == ro && r.Dst.IP.Equal(dst.IP.Mask(dst.Mask))
		}
		if !same {
			continue
		}
		if gw == nil || gw.Equal(r.Gw) {
			return true
		}
		for _, nh := range r.MultiPath {
			if gw.Equal(nh.Gw) {
				return true
			}
		}
	}
	return false
}
