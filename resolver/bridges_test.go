package resolver

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestSelectBridges(t *testing.T) {
	p := netip.MustParsePrefix
	links := []link{
		{name: "lo", index: 1, up: true, loopback: true, addrs: []netip.Prefix{p("127.0.0.1/8")}},
		{name: "eth0", index: 2, up: true, uplink: true, addrs: []netip.Prefix{p("192.0.2.10/24")}},
		{name: "br0", index: 3, bridge: true, up: true, addrs: []netip.Prefix{p("10.1.0.1/24"), p("fd00::1/64")}},
		{name: "bn1", index: 4, bridge: true, up: true, addrs: []netip.Prefix{p("10.2.0.1/16")}},
		{name: "bn2", index: 5, bridge: true, up: false, addrs: []netip.Prefix{p("10.3.0.1/24")}},
		{name: "bn3", index: 6, bridge: true, up: true, addrs: []netip.Prefix{p("fd01::1/64")}},
		{name: "veth9", index: 7, up: true, addrs: []netip.Prefix{p("10.4.0.1/24")}},
		{name: "br-up", index: 8, bridge: true, up: true, uplink: true, addrs: []netip.Prefix{p("10.5.0.1/24")}},
	}
	names := func(bs []Bridge) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Name+"="+b.Prefix.String()+"@"+b.Addr.String())
		}
		return out
	}
	tests := []struct {
		globs []string
		want  []string
	}{
		{nil, []string{"br0=10.1.0.0/24@10.1.0.1", "bn1=10.2.0.0/16@10.2.0.1"}},
		{[]string{"bn*"}, []string{"bn1=10.2.0.0/16@10.2.0.1"}},
		{[]string{"veth*"}, []string{"veth9=10.4.0.0/24@10.4.0.1"}},
		{[]string{"eth0", "lo", "br-up"}, nil},
		{[]string{"*"}, []string{"br0=10.1.0.0/24@10.1.0.1", "bn1=10.2.0.0/16@10.2.0.1", "veth9=10.4.0.0/24@10.4.0.1"}},
	}
	for _, tt := range tests {
		if got := names(selectBridges(links, tt.globs)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("globs %q: got %v, want %v", tt.globs, got, tt.want)
		}
	}
}

func TestListBridgesRejectsBadGlob(t *testing.T) {
	if _, err := ListBridges([]string{"br["}); err == nil {
		t.Fatal("a malformed glob must be an error")
	}
}
