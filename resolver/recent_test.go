package resolver

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestRecentLog(t *testing.T) {
	var l recentLog
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	ds := Result{Host: "ds.local.", Interface: "br0", Addr: netip.MustParseAddr("10.0.0.2"), Service: "A"}
	l.add(ds, t0)
	moved := ds
	moved.Addr = netip.MustParseAddr("10.0.0.9") // the datastore came back elsewhere
	l.add(moved, t0.Add(time.Second))
	other := Result{Host: "ds.local.", Interface: "br1", Addr: netip.MustParseAddr("10.1.0.2"), Service: "_workstation._tcp"}
	l.add(other, t0.Add(2*time.Second))

	got := l.list()
	if len(got) != 2 {
		t.Fatalf("%d entries, want one per bridge: %+v", len(got), got)
	}
	if got[0].Interface != "br1" || got[1].Interface != "br0" {
		t.Errorf("order %s, %s; want most recent first", got[0].Interface, got[1].Interface)
	}
	if got[1].Addr != moved.Addr || got[1].Count != 2 || !got[1].Last.Equal(t0.Add(time.Second)) {
		t.Errorf("br0 entry %+v, want the latest address, count 2", got[1])
	}

	// A neighbour making us ask for many names cannot grow the log.
	for i := range 3 * maxRecent {
		l.add(Result{Host: fmt.Sprintf("n%d.local.", i), Interface: "br0"}, t0.Add(time.Hour+time.Duration(i)*time.Second))
	}
	got = l.list()
	if len(got) != maxRecent {
		t.Fatalf("%d entries, want at most %d", len(got), maxRecent)
	}
	if want := fmt.Sprintf("n%d.local.", 3*maxRecent-1); got[0].Host != want {
		t.Errorf("newest %s, want %s (the oldest are evicted)", got[0].Host, want)
	}
}
