package resolver

import (
	"fmt"
	"net"
	"net/netip"
	"path"

	"github.com/vishvananda/netlink"
)

// Bridge is one internal network localds asks on: an interface and one of
// its IPv4 addresses. Queries leave from Addr, bound to the device, and
// answers are only believed if they lie inside Prefix.
type Bridge struct {
	Name   string
	Index  int
	Addr   netip.Addr
	Prefix netip.Prefix
}

func (b Bridge) String() string { return fmt.Sprintf("%s (%s)", b.Name, b.Prefix) }

// link is what bridge selection needs to know about an interface; it keeps
// the selection rules testable without a kernel.
type link struct {
	name     string
	index    int
	bridge   bool
	up       bool
	loopback bool
	uplink   bool // carries an IPv4 default route
	addrs    []netip.Prefix
}

// ListBridges returns the interfaces to ask on, in the order the kernel
// lists them. With no globs that is every Linux bridge that is up and has
// an IPv4 address; with globs, every up interface whose name matches one.
// The uplink (an interface with a default route) and loopback never are:
// a datastore is only ever on an internal bridge. Netlink, not /sys, is
// read so that this works inside any network namespace the caller is in.
func ListBridges(globs []string) ([]Bridge, error) {
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("interface pattern %q: %w", g, err)
		}
	}
	links, err := readLinks()
	if err != nil {
		return nil, err
	}
	return selectBridges(links, globs), nil
}

func selectBridges(links []link, globs []string) []Bridge {
	var out []Bridge
	for _, l := range links {
		if !l.up || l.loopback || l.uplink {
			continue
		}
		if len(globs) == 0 && !l.bridge {
			continue
		}
		if len(globs) > 0 && !matchAny(globs, l.name) {
			continue
		}
		for _, p := range l.addrs {
			if p.Addr().Is4() {
				out = append(out, Bridge{Name: l.name, Index: l.index, Addr: p.Addr(), Prefix: p.Masked()})
			}
		}
	}
	return out
}

func matchAny(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

func readLinks() ([]link, error) {
	nlinks, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	uplinks := map[int]bool{}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
			uplinks[r.LinkIndex] = true
		}
	}
	var out []link
	for _, nl := range nlinks {
		attrs := nl.Attrs()
		l := link{
			name:     attrs.Name,
			index:    attrs.Index,
			bridge:   nl.Type() == "bridge",
			up:       attrs.Flags&net.FlagUp != 0,
			loopback: attrs.Flags&net.FlagLoopback != 0,
			uplink:   uplinks[attrs.Index],
		}
		addrs, err := netlink.AddrList(nl, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", attrs.Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if !ok {
				continue
			}
			bits, _ := a.Mask.Size()
			l.addrs = append(l.addrs, netip.PrefixFrom(ip, bits))
		}
		out = append(out, l)
	}
	return out, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}
