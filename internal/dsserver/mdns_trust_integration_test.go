package dsserver_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localds/localds/internal/testnet"
)

// holder starts the real avahi-daemon holding dsName in a second app
// namespace on br0, at 10.77.1.5.
func (s *site) holder(t *testing.T) *testnet.Process {
	t.Helper()
	ns := s.net.Namespace("holder")
	s.net.Connect(s.node, "br0", ns, "eth0", "10.77.1.5/24")
	return testnet.StartAvahi(t, ns, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
}

// TestServeYieldsToAvahi: Avahi already holds the name on the link;
// `localds serve --hostname` probes, hears Avahi's answer and exits
// non-zero naming the holder, and Avahi keeps its name.
func TestServeYieldsToAvahi(t *testing.T) {
	s := newSite(t)
	avahi := s.holder(t)
	p := s.app.Start(t, s.bin, "serve", "--hostname", dsName, "--dir", t.TempDir(), "--interface", "eth0", "--listen", ":80")
	err := p.Wait(15 * time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("serve must exit non-zero when the name is taken, got %v; log:\n%s", err, p.Log())
	}
	for _, want := range []string{"already in use", dsHost, "10.77.1.5", "not taking it"} {
		if !strings.Contains(p.Log(), want) {
			t.Errorf("serve's error lacks %q; log:\n%s", want, p.Log())
		}
	}
	if strings.Contains(p.Log(), "mdns: answering") {
		t.Errorf("serve answered for a name it does not hold; log:\n%s", p.Log())
	}
	if strings.Contains(avahi.Log(), "conflict") {
		t.Errorf("Avahi saw a conflict and may have given its name away; log:\n%s", avahi.Log())
	}
	if got, out, err := s.resolve(t, "br0"); err != nil || got != "10.77.1.5" {
		t.Fatalf("the name must still be Avahi's (10.77.1.5), got %q %v:\n%s", got, err, out)
	}
}

// TestAvahiYieldsToServe: `localds serve` holds the name; an Avahi starting
// later on the link probes, gets serve's defence, logs the conflict and
// renames itself; the name stays serve's.
func TestAvahiYieldsToServe(t *testing.T) {
	s := newSite(t)
	p := s.serve(t, t.TempDir())
	avahi := s.holder(t)
	if !strings.Contains(avahi.Log(), "Host name conflict, retrying with "+dsName+"-2") {
		t.Fatalf("Avahi did not yield the name; its log:\n%s", avahi.Log())
	}
	if done, _ := p.Exited(); done {
		t.Fatalf("serve stopped; log:\n%s", p.Log())
	}
	if got, out, err := s.resolve(t, "br0"); err != nil || got != "10.77.1.2" {
		t.Fatalf("the name must still be serve's (10.77.1.2), got %q %v:\n%s", got, err, out)
	}
}

// TestFloodDoesNotSilence: a neighbour at 10.77.1.6 floods the datastore
// with thousands of queries a second; `localds resolve` from the node
// still gets answers, because the reply limit is per source address.
func TestFloodDoesNotSilence(t *testing.T) {
	s := newSite(t)
	s.serve(t, t.TempDir())
	flood := s.net.Namespace("flood")
	s.net.Connect(s.node, "br0", flood, "eth0", "10.77.1.6/24")
	var conn net.PacketConn
	if err := flood.Do(func() error {
		c, err := net.ListenPacket("udp4", "10.77.1.6:0")
		conn = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := newQuery(0x7777, dsHost+".", dns.TypeA)
	pkt, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent int
	wg.Go(func() {
		// ~5000 queries/s, bounded: 60 s or 300000 packets at most.
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.77.1.2:5353"))
		deadline := time.Now().Add(time.Minute)
		for sent < 300000 && ctx.Err() == nil && time.Now().Before(deadline) {
			for range 50 {
				conn.WriteTo(pkt, dst)
				sent++
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	// Let the flood fill the first window before asking.
	time.Sleep(300 * time.Millisecond)
	for i := range 3 {
		got, out, err := s.resolve(t, "br0")
		if err != nil || got != "10.77.1.2" {
			cancel()
			wg.Wait()
			t.Fatalf("resolution %d under a flood: %q %v:\n%s", i, got, err, out)
		}
	}
	cancel()
	wg.Wait()
	if sent < 1000 {
		t.Fatalf("the flood sent only %d queries", sent)
	}
}

// TestServeRenamesOnConflict: with --rename-on-conflict, a name Avahi
// holds makes `localds serve` warn and answer as NAME-2; Avahi keeps NAME.
func TestServeRenamesOnConflict(t *testing.T) {
	s := newSite(t)
	avahi := s.holder(t)
	p := s.app.Start(t, s.bin, "serve", "--hostname", dsName, "--dir", t.TempDir(), "--interface", "eth0",
		"--listen", ":80", "--poll-interval", "200ms", "--rename-on-conflict")
	p.WaitLog(t, "mdns: answering", 15*time.Second)
	if !strings.Contains(p.Log(), "NAME CONFLICT") || !strings.Contains(p.Log(), dsName+"-2.local.") {
		t.Fatalf("no loud rename in serve's log:\n%s", p.Log())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.node.Command(ctx, s.bin, "resolve", "--interface", "br0", "--timeout", "3s", dsName+"-2.local").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "10.77.1.2\n") {
		t.Fatalf("%s-2.local must be serve's 10.77.1.2: %v\n%s", dsName, err, out)
	}
	if got, out, err := s.resolve(t, "br0"); err != nil || got != "10.77.1.5" {
		t.Fatalf("%s must still be Avahi's (10.77.1.5), got %q %v:\n%s", dsHost, got, err, out)
	}
	if strings.Contains(avahi.Log(), "conflict") {
		t.Errorf("Avahi saw a conflict; log:\n%s", avahi.Log())
	}
}
