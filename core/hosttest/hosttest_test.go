package hosttest

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestFreePodCIDR: the subnet is a /24 of 10.244.100.0-10.244.249.0 that no address of
// this machine is in.
func TestFreePodCIDR(t *testing.T) {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		t.Skip("not Linux")
	}
	_, subnet, err := net.ParseCIDR(FreePodCIDR(t))
	if err != nil {
		t.Fatal(err)
	}
	if ones, _ := subnet.Mask.Size(); ones != 24 || subnet.IP[0] != 10 || subnet.IP[1] != 244 || subnet.IP[2] < 100 || subnet.IP[2] >= 250 {
		t.Errorf("FreePodCIDR = %s", subnet)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && subnet.Contains(n.IP) {
			t.Errorf("FreePodCIDR = %s, which holds this machine's %s", subnet, n.IP)
		}
	}
}

// TestMountsUnder: a directory of the test's own has no mounts; /proc is one, listed
// after whatever is mounted below it (deepest first).
func TestMountsUnder(t *testing.T) {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		t.Skip("not Linux")
	}
	if got := MountsUnder(t, filepath.Join(t.TempDir(), "x")); len(got) != 0 {
		t.Errorf("MountsUnder(a new directory) = %v", got)
	}
	if got := MountsUnder(t, "/proc"); len(got) == 0 || got[len(got)-1] != "/proc" {
		t.Errorf("MountsUnder(/proc) = %v, want /proc last", got)
	}
	if n := UnmountUnder(t, filepath.Join(t.TempDir(), "x")); n != 0 {
		t.Errorf("UnmountUnder(a new directory) = %d", n)
	}
}
