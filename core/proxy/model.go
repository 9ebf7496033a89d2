package proxy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The rule model: what the proxy wants in its table, independent of the kernel. Every term
// of a rule renders both as nft's syntax (String, for tests, logs and the diff against
// what was applied) and as the netlink expressions the kernel runs (exprs), so that the
// readable form tested without a kernel is the form that gets programmed.

// Ruleset is the whole content of the proxy's table.
type Ruleset struct {
	// Chains by name; base chains carry their hook.
	Chains map[string]*Chain
	// Maps are the verdict maps by name, each with its elements.
	Maps map[string]*VMap
	// AffinitySets are the per-endpoint sets of client addresses (sessionAffinity
	// ClientIP), by name, with their timeout.
	AffinitySets map[string]time.Duration
}

// Chain is one chain with its rules.
type Chain struct {
	Name  string
	Base  *BaseChain // nil for a regular chain
	Rules []Rule
}

// BaseChain is where a base chain hooks into the stack.
type BaseChain struct {
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	HookName string
	Priority int32
}

// Rule is a list of terms (matches, then statements), as one line of nft.
type Rule []Term

func (r Rule) String() string {
	parts := make([]string, len(r))
	for i, t := range r {
		parts[i] = t.String()
	}
	return strings.Join(parts, " ")
}

// Term is one match or statement of a rule.
type Term interface {
	String() string
	exprs() []expr.Any
}

// KeyKind is the key type of a verdict map.
type KeyKind int

const (
	// AddrProtoPort keys are `ipv4_addr . inet_proto . inet_service`.
	AddrProtoPort KeyKind = iota
	// ProtoPort keys are `inet_proto . inet_service`.
	ProtoPort
)

func (k KeyKind) setType() nftables.SetDatatype {
	if k == ProtoPort {
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	}
	return nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
}

// VMap is a verdict map: each key goes to a chain.
type VMap struct {
	Name  string
	Kind  KeyKind
	Elems map[Key]string // key -> chain to goto
}

// Key is one key of a verdict map; Addr is not valid in ProtoPort maps.
type Key struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
}

func (k Key) String() string {
	if k.Addr.IsValid() {
		return fmt.Sprintf("%s . %s . %d", k.Addr, protoName(k.Proto), k.Port)
	}
	return fmt.Sprintf("%s . %d", protoName(k.Proto), k.Port)
}

// bytes is the key as the kernel stores it: each field padded to 4 bytes.
func (k Key) bytes() []byte {
	var b []byte
	if k.Addr.IsValid() {
		a := k.Addr.As4()
		b = append(b, a[:]...)
	}
	b = append(b, k.Proto, 0, 0, 0)
	b = append(b, byte(k.Port>>8), byte(k.Port), 0, 0)
	return b
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return fmt.Sprint(p)
}

// String renders the ruleset in nft's syntax, sorted, for tests and for humans.
func (rs *Ruleset) String() string {
	var b strings.Builder
	for _, name := range sortedKeys(rs.AffinitySets) {
		fmt.Fprintf(&b, "set %s { type ipv4_addr; flags dynamic,timeout; timeout %s }\n", name, rs.AffinitySets[name])
	}
	for _, name := range sortedKeys(rs.Maps) {
		m := rs.Maps[name]
		fmt.Fprintf(&b, "map %s {\n", name)
		keys := make([]Key, 0, len(m.Elems))
		for k := range m.Elems {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		for _, k := range keys {
			fmt.Fprintf(&b, "\t%s : goto %s\n", k, m.Elems[k])
		}
		b.WriteString("}\n")
	}
	for _, name := range sortedKeys(rs.Chains) {
		b.WriteString(rs.Chains[name].String())
	}
	return b.String()
}

func (c *Chain) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chain %s {\n", c.Name)
	if c.Base != nil {
		fmt.Fprintf(&b, "\ttype %s hook %s priority %d\n", c.Base.Type, c.Base.HookName, c.Base.Priority)
	}
	for _, r := range c.Rules {
		fmt.Fprintf(&b, "\t%s\n", r)
	}
	b.WriteString("}\n")
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Registers: reg 1 is the 16-byte register that holds single values and the start of
// concatenations; 9 and 10 are its second and third 32-bit words, as nft uses them.
const (
	reg1     = unix.NFT_REG_1
	reg32_01 = 9
	reg32_02 = 10
)

// masqMark is the packet mark bit that asks for masquerading in postrouting.
const masqMark = 0x4000

// addrMatch matches the source or destination address against a prefix (or one address).
type addrMatch struct {
	src    bool
	neg    bool
	prefix netip.Prefix
}

func (m addrMatch) String() string {
	field := "daddr"
	if m.src {
		field = "saddr"
	}
	op := ""
	if m.neg {
		op = "!= "
	}
	p := m.prefix.String()
	if m.prefix.IsSingleIP() {
		p = m.prefix.Addr().String()
	}
	return fmt.Sprintf("ip %s %s%s", field, op, p)
}

func (m addrMatch) exprs() []expr.Any {
	off := uint32(16)
	if m.src {
		off = 12
	}
	es := []expr.Any{&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
	if bits := m.prefix.Bits(); bits < 32 {
		mask := uint32(0xffffffff) << (32 - bits)
		es = append(es, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.BigEndian.PutUint32(mask), Xor: []byte{0, 0, 0, 0}})
	}
	op := expr.CmpOpEq
	if m.neg {
		op = expr.CmpOpNeq
	}
	a := m.prefix.Masked().Addr().As4()
	return append(es, &expr.Cmp{Op: op, Register: reg1, Data: a[:]})
}

// protoMatch is `meta l4proto P`.
type protoMatch uint8

func (m protoMatch) String() string { return "meta l4proto " + protoName(uint8(m)) }
func (m protoMatch) exprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{uint8(m)}},
	}
}

// fibLocal is `fib saddr type local` or `fib daddr type local`.
type fibLocal struct{ src bool }

func (m fibLocal) String() string {
	if m.src {
		return "fib saddr type local"
	}
	return "fib daddr type local"
}
func (m fibLocal) exprs() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, ResultADDRTYPE: true, FlagSADDR: m.src, FlagDADDR: !m.src},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// ctNew is `ct state new`.
type ctNew struct{}

func (ctNew) String() string { return "ct state new" }
func (ctNew) exprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// saddrInSet is `ip saddr @SET`.
type saddrInSet string

func (m saddrInSet) String() string { return "ip saddr @" + string(m) }
func (m saddrInSet) exprs() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: reg1, SetName: string(m)},
	}
}

// numgenZero is `numgen random mod N == 0`: true with probability 1/N.
type numgenZero uint32

func (m numgenZero) String() string { return fmt.Sprintf("numgen random mod %d == 0", uint32(m)) }
func (m numgenZero) exprs() []expr.Any {
	return []expr.Any{
		&expr.Numgen{Register: reg1, Modulus: uint32(m), Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// vmapLookup is `KEY vmap @MAP`, KEY being the map's kind of key.
type vmapLookup struct {
	kind KeyKind
	name string
}

func (m vmapLookup) String() string {
	if m.kind == ProtoPort {
		return "meta l4proto . th dport vmap @" + m.name
	}
	return "ip daddr . meta l4proto . th dport vmap @" + m.name
}
func (m vmapLookup) exprs() []expr.Any {
	var es []expr.Any
	protoReg, portReg := uint32(reg1), uint32(reg32_01)
	if m.kind == AddrProtoPort {
		es = append(es, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4})
		protoReg, portReg = reg32_01, reg32_02
	}
	return append(es,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, DestRegister: 0, IsDestRegSet: true, SetName: m.name},
	)
}

// markMasq is `meta mark set mark | 0x4000`.
type markMasq struct{}

func (markMasq) String() string { return fmt.Sprintf("meta mark set mark | %#x", masqMark) }
func (markMasq) exprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqMark)), Xor: binaryutil.NativeEndian.PutUint32(masqMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// markUnset is `meta mark & 0x4000 == 0`.
type markUnset struct{}

func (markUnset) String() string { return fmt.Sprintf("meta mark & %#x == 0", masqMark) }
func (markUnset) exprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// markClear is `meta mark set mark ^ 0x4000` (the bit is known to be set).
type markClear struct{}

func (markClear) String() string { return fmt.Sprintf("meta mark set mark ^ %#x", masqMark) }
func (markClear) exprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(0xffffffff), Xor: binaryutil.NativeEndian.PutUint32(masqMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// masquerade is `masquerade fully-random`.
type masquerade struct{}

func (masquerade) String() string    { return "masquerade fully-random" }
func (masquerade) exprs() []expr.Any { return []expr.Any{&expr.Masq{FullyRandom: true}} }

// dnat is `dnat to ADDR:PORT`.
type dnat netip.AddrPort

func (s dnat) String() string { return "dnat to " + netip.AddrPort(s).String() }
func (s dnat) exprs() []expr.Any {
	ap := netip.AddrPort(s)
	a := ap.Addr().As4()
	return []expr.Any{
		&expr.Immediate{Register: reg1, Data: a[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ap.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: 2, Specified: true},
	}
}

// updateAffinity is `update @SET { ip saddr }`: remembers the client for the set's timeout.
type updateAffinity string

func (s updateAffinity) String() string { return "update @" + string(s) + " { ip saddr }" }
func (s updateAffinity) exprs() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Dynset{SrcRegKey: reg1, SetName: string(s), Operation: unix.NFT_DYNSET_OP_UPDATE},
	}
}

// icmpPortUnreachable is ICMP's code 3 of destination unreachable.
const icmpPortUnreachable = 3

// reject is `reject` (ICMP port unreachable), or `reject with tcp reset`. TCP gets a
// reset: the kernel rate-limits ICMP errors per client, which can hold a client's
// connect() until its SYN is retransmitted a second later.
type reject struct{ tcpReset bool }

func (r reject) String() string {
	if r.tcpReset {
		return "reject with tcp reset"
	}
	return "reject"
}
func (r reject) exprs() []expr.Any {
	if r.tcpReset {
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	}
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnreachable}}
}

// verdict is jump, goto, drop or return.
type verdict struct {
	kind  expr.VerdictKind
	chain string
}

func jump(chain string) verdict   { return verdict{kind: expr.VerdictJump, chain: chain} }
func gotoTo(chain string) verdict { return verdict{kind: expr.VerdictGoto, chain: chain} }

var (
	drop  = verdict{kind: expr.VerdictDrop}
	retrn = verdict{kind: expr.VerdictReturn}
)

func (v verdict) String() string {
	switch v.kind {
	case expr.VerdictJump:
		return "jump " + v.chain
	case expr.VerdictGoto:
		return "goto " + v.chain
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	}
	return fmt.Sprintf("verdict %d", v.kind)
}
func (v verdict) exprs() []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: v.kind, Chain: v.chain}}
}
