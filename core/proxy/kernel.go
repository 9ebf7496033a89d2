package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the name of the proxy's table, in the ip family: `nft list table ip berth-proxy`.
const TableName = "berth-proxy"

// Limits of one netlink batch. An element list is one netlink attribute (at most 64 KiB),
// hence elemChunk; the kernel acknowledges every message of a batch into the socket's
// receive buffer before the proxy reads them, hence a bounded batch (and a large buffer).
// Only a full sync of thousands of Services spans several batches; a Service's change is
// always one.
const (
	elemChunk   = 512
	batchLimit  = 4000
	socketBytes = 32 << 20
)

// kernel programs a Ruleset into the proxy's table through netlink, sending only what
// differs from what it applied last.
type kernel struct {
	conn    *nftables.Conn
	table   *nftables.Table
	applied *Ruleset          // nil: the table's content is unknown (next apply starts over)
	rules   map[string]string // chain -> its rules as applied, rendered
	pending int               // messages queued since the last flush
}

func newKernel(table string) (*kernel, error) {
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return nil, fmt.Errorf("nftables netlink socket: %w", err)
	}
	return &kernel{conn: conn, table: &nftables.Table{Name: table, Family: nftables.TableFamilyIPv4}}, nil
}

// bigBuffers raises the socket's buffers past the system's default maximum (as root), so
// that a batch of thousands of messages and their acknowledgements fit.
func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBytes); e != nil {
			serr = e
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBytes)
	})
	if err != nil {
		return err
	}
	if errors.Is(serr, unix.EPERM) {
		return nil // not root: the defaults, and smaller batches would be needed
	}
	return serr
}

func (k *kernel) close() error { return k.conn.CloseLasting() }

// flush sends what is queued as one batch.
func (k *kernel) flush() error {
	if k.pending == 0 {
		return nil
	}
	k.pending = 0
	if err := k.conn.Flush(); err != nil {
		return fmt.Errorf("nftables batch: %w", err)
	}
	return nil
}

// maybeFlush sends the queued batch once it is large; only at points where the table is
// consistent.
func (k *kernel) maybeFlush() error {
	if k.pending < batchLimit {
		return nil
	}
	return k.flush()
}

func (k *kernel) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: k.table}
}

// apply makes the whole table hold want, sending what differs from the last apply (all
// of it the first time). It returns how many objects it changed.
func (k *kernel) apply(want *Ruleset) (int, error) {
	n, err := k.applyChanges(k.applied, want)
	k.applied = nil
	if err == nil {
		k.applied = want
	}
	return n, err
}

// applyChanges turns old into want: both whole tables, or both the part of the table that
// some Services own (their chains, sets and map elements, as serviceRuleset builds them).
// A nil old rebuilds the table from scratch. After an error the table's state is unknown:
// the next call must rebuild it (old nil).
func (k *kernel) applyChanges(old, want *Ruleset) (int, error) {
	n, err := k.diff(old, want)
	if err != nil {
		k.rules = nil
		k.pending = 0
	}
	return n, err
}

func (k *kernel) diff(old, want *Ruleset) (int, error) {
	changes := 0
	if old == nil {
		// Start over: whatever an earlier run left is removed in the same batch that
		// rebuilds the table (add, delete, add: no error when it did not exist).
		k.conn.AddTable(k.table)
		k.conn.DelTable(k.table)
		k.conn.AddTable(k.table)
		k.pending += 3
		old = emptyRuleset()
		k.rules = map[string]string{}
		for _, name := range sortedKeys(want.Maps) {
			m := want.Maps[name]
			kt := m.Kind.setType()
			if err := k.conn.AddSet(&nftables.Set{Table: k.table, Name: name, IsMap: true, Concatenation: true,
				KeyType: kt, DataType: nftables.TypeVerdict}, nil); err != nil {
				return changes, fmt.Errorf("map %s: %w", name, err)
			}
			k.pending++
		}
	}

	// New affinity sets, before the rules that use them.
	for _, name := range sortedKeys(want.AffinitySets) {
		if _, ok := old.AffinitySets[name]; ok {
			continue
		}
		if err := k.conn.AddSet(&nftables.Set{Table: k.table, Name: name, KeyType: nftables.TypeIPAddr,
			HasTimeout: true, Dynamic: true, Timeout: want.AffinitySets[name]}, nil); err != nil {
			return changes, fmt.Errorf("set %s: %w", name, err)
		}
		k.pending++
		changes++
	}

	// Chains: regular ones first, since base chains jump to them. A new chain is added, a
	// changed one flushed and filled again. Chains a rule points to are added before the
	// rule, since they sort first or were added earlier in this order.
	names := sortedKeys(want.Chains)
	slices.SortStableFunc(names, func(a, b string) int { return chainOrder(want.Chains[a]) - chainOrder(want.Chains[b]) })
	for _, name := range names {
		c := want.Chains[name]
		text := renderRules(c)
		if prev, ok := k.rules[name]; ok && prev == text {
			continue
		}
		nc := k.chain(name)
		if c.Base != nil {
			prio := nftables.ChainPriority(c.Base.Priority)
			nc.Hooknum, nc.Priority, nc.Type = c.Base.Hook, &prio, c.Base.Type
		}
		if _, ok := k.rules[name]; ok {
			k.conn.FlushChain(nc)
		} else {
			k.conn.AddChain(nc)
		}
		k.pending++
		for _, r := range c.Rules {
			var es = r[0].exprs()
			for _, t := range r[1:] {
				es = append(es, t.exprs()...)
			}
			k.conn.AddRule(&nftables.Rule{Table: k.table, Chain: nc, Exprs: es})
			k.pending++
		}
		k.rules[name] = text
		changes++
		if err := k.maybeFlush(); err != nil {
			return changes, err
		}
	}

	// Map elements: the ones gone or pointing elsewhere deleted, then the new ones added.
	for _, name := range sortedKeys(want.Maps) {
		m, om := want.Maps[name], old.Maps[name]
		if om == nil {
			om = &VMap{Name: name, Kind: m.Kind}
		}
		set := &nftables.Set{Table: k.table, Name: name, IsMap: true, Concatenation: true, KeyType: m.Kind.setType(), DataType: nftables.TypeVerdict}
		var del, add []nftables.SetElement
		for key, chain := range om.Elems {
			if c, ok := m.Elems[key]; !ok || c != chain {
				del = append(del, nftables.SetElement{Key: key.bytes()})
			}
		}
		for key, chain := range m.Elems {
			if c, ok := om.Elems[key]; !ok || c != chain {
				add = append(add, nftables.SetElement{Key: key.bytes(), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}})
			}
		}
		for _, step := range []struct {
			elems []nftables.SetElement
			op    func(*nftables.Set, []nftables.SetElement) error
		}{{del, k.conn.SetDeleteElements}, {add, k.conn.SetAddElements}} {
			for len(step.elems) > 0 {
				chunk := step.elems[:min(elemChunk, len(step.elems))]
				step.elems = step.elems[len(chunk):]
				if err := step.op(set, chunk); err != nil {
					return changes, fmt.Errorf("map %s elements: %w", name, err)
				}
				k.pending++
				changes += len(chunk)
			}
			if err := k.maybeFlush(); err != nil {
				return changes, err
			}
		}
	}

	// Chains and sets no longer wanted, now that nothing points to them.
	gone := sortedKeys(old.Chains)
	slices.SortStableFunc(gone, func(a, b string) int { return chainOrder(old.Chains[b]) - chainOrder(old.Chains[a]) })
	for _, name := range gone {
		if _, ok := want.Chains[name]; ok {
			continue
		}
		k.conn.DelChain(k.chain(name))
		delete(k.rules, name)
		k.pending++
		changes++
	}
	for _, name := range sortedKeys(old.AffinitySets) {
		if _, ok := want.AffinitySets[name]; ok {
			continue
		}
		k.conn.DelSet(&nftables.Set{Table: k.table, Name: name})
		k.pending++
		changes++
	}
	return changes, k.flush()
}

// chainOrder sorts chains so that a chain is added before any rule that jumps to it: the
// fixed regular chains, endpoint chains, the ClusterIP and all-endpoint chains, the
// external chains, then the base chains. Deletion goes the other way.
func chainOrder(c *Chain) int {
	switch {
	case c.Base != nil:
		return 4
	case strings.HasPrefix(c.Name, "ep-"):
		return 1
	case strings.HasPrefix(c.Name, "svc-"), strings.HasPrefix(c.Name, "all-"):
		return 2
	case strings.HasPrefix(c.Name, "ext-"):
		return 3
	}
	return 0
}

func renderRules(c *Chain) string {
	s := ""
	for _, r := range c.Rules {
		s += r.String() + "\n"
	}
	return s
}

// deleteTable removes the proxy's table; a table that is not there is no error.
func (k *kernel) deleteTable() error {
	k.conn.AddTable(k.table)
	k.conn.DelTable(k.table)
	k.pending = 0
	k.applied, k.rules = nil, nil
	if err := k.conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("delete table %s: %w", k.table.Name, err)
	}
	return nil
}
