package resolver_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/miekg/dns"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// The datastore name EVE-OS documents.
const (
	dsName = "ubuntu-4321-http-server"
	dsHost = dsName + ".local"
)

// node is a test edge node: a node namespace with one bridge per entry
// of subnets ("br0" -> "10.77.1"), each with an app namespace behind it at
// <subnet>.2 on eth0.
type node struct {
	net  *testnet.Net
	ns   *testnet.Namespace
	apps map[string]*testnet.Namespace
}

func newNode(t *testing.T, subnets map[string]string) *node {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs root and network namespaces (skipped by -short)")
	}
	n := testnet.New(t)
	nd := &node{net: n, ns: n.Namespace("node"), apps: map[string]*testnet.Namespace{}}
	for br, prefix := range subnets {
		n.Bridge(nd.ns, br, prefix+".1/24")
		app := n.Namespace("app-" + br)
		n.Connect(nd.ns, br, app, "eth0", prefix+".2/24")
		nd.apps[br] = app
	}
	return nd
}

func (nd *node) avahi(t *testing.T, br, hostName string, services map[string]string) *testnet.Process {
	return testnet.StartAvahi(t, nd.apps[br], testnet.AvahiConfig{
		HostName:        hostName,
		AllowInterfaces: []string{"eth0"},
		Services:        services,
	})
}

// echo starts the echo peer in the app behind br, on port 7070.
func (nd *node) echo(t *testing.T, br string) *testnet.Process {
	cmd := nd.apps[br].Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), envEcho+"=0.0.0.0:7070")
	p := testnet.StartCmd(t, cmd)
	p.WaitLog(t, "echo listening", 10*time.Second)
	return p
}

// TestAvahiResolveCLI: the real avahi-daemon configured as EVE-OS says, with
// Avahi's default publish-aaaa-on-ipv4, found by `localds resolve` from the
// node namespace; the first line is the IPv4 address.
func TestAvahiResolveCLI(t *testing.T) {
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.avahi(t, "br0", dsName, map[string]string{"http": testnet.AvahiService("_http._tcp", 80)})
	bin := testnet.Binary(t, "localds")

	// Avahi does publish an AAAA record over IPv4 here, so the resolver
	// really is shown one and must ignore it.
	if rrs := rawQuery(t, nd, dsHost+".", dns.TypeAAAA); !hasType(rrs, dns.TypeAAAA) {
		t.Fatalf("avahi published no AAAA record; the AAAA case is not exercised: %v", rrs)
	}

	out := nd.ns.Run(t, bin, "resolve", "--timeout", "3s", dsHost)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != "10.77.1.2" {
		t.Fatalf("first line %q, want 10.77.1.2; output:\n%s", lines[0], out)
	}
	for _, want := range []string{"interface: br0", "source:    10.77.1.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// rawQuery asks the app behind br0 one legacy-unicast question from the node.
func rawQuery(t *testing.T, nd *node, name string, qtype uint16) []dns.RR {
	t.Helper()
	var rrs []dns.RR
	err := doInNS(nd.ns, func() error {
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := c.Exchange(m, "10.77.1.2:5353")
		if err != nil {
			return err
		}
		rrs = append(r.Answer, r.Extra...)
		return nil
	})
	if err != nil {
		t.Fatalf("raw query %s: %v", name, err)
	}
	return rrs
}

func doInNS(ns *testnet.Namespace, fn func() error) error { return ns.Do(fn) }

func hasType(rrs []dns.RR, qtype uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == qtype {
			return true
		}
	}
	return false
}

// TestTwoBridges: the datastore sits behind the second bridge; it is found
// there and the dialer connects from that bridge's address.
func TestTwoBridges(t *testing.T) {
	if testnet.IsChild(t) {
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second})
		res, err := d.Resolve(context.Background(), dsHost)
		if err != nil {
			t.Fatal(err)
		}
		if res.Interface != "bn1" || res.Addr.String() != "10.78.1.2" || res.Source.String() != "10.78.1.1" {
			t.Fatalf("resolved %+v, want 10.78.1.2 on bn1 from 10.78.1.1", res)
		}
		remote, local := echoVia(t, resolver.NewDialer(d), dsHost+":7070")
		if remote.Addr().String() != "10.78.1.1" || local.Addr().String() != "10.78.1.2" {
			t.Fatalf("echo saw the client at %s (server %s); want source 10.78.1.1 (bn1)", remote, local)
		}
		return
	}
	nd := newNode(t, map[string]string{"br0": "10.77.1", "bn1": "10.78.1"})
	nd.avahi(t, "br0", "some-other-app", nil)
	nd.avahi(t, "bn1", dsName, nil)
	nd.echo(t, "bn1")
	nd.ns.RunTest(t, nil)
}

// echoVia dials address through dialer and returns what the echo peer saw.
func echoVia(t *testing.T, dialer *resolver.Dialer, address string) (remote, local netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dialer.DialContext(ctx, "tcp", address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from echo peer: %v", err)
	}
	var r, l string
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "remote="); ok {
			r = v
		}
		if v, ok := strings.CutPrefix(f, "local="); ok {
			l = v
		}
	}
	remote, err1 := netip.ParseAddrPort(r)
	local, err2 := netip.ParseAddrPort(l)
	if err1 != nil || err2 != nil {
		t.Fatalf("echo peer said %q", line)
	}
	if c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap() != remote.Addr() {
		t.Fatalf("local end %s differs from what the peer saw, %s", c.LocalAddr(), remote)
	}
	return remote, local
}

// TestDecoyNeverAccepted: behind br0, a hostile responder answers every
// question with bait (wrong subnet, similar names, wrong ID, wrong port,
// AAAA only, truncated) and Avahi announces a similar name. Nothing is
// accepted: a clear not-found error that names the bridge asked.
func TestDecoyNeverAccepted(t *testing.T) {
	if testnet.IsChild(t) {
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 1500 * time.Millisecond})
		res, err := d.Resolve(context.Background(), dsHost)
		if err == nil {
			t.Fatalf("accepted a decoy answer: %+v", res)
		}
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "br0 (10.77.1.0/24)") {
			t.Fatalf("want a not-found error naming br0, got: %v", err)
		}
		return
	}
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.avahi(t, "br0", dsName+"-2", nil)
	cmd := nd.apps["br0"].Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), envDecoy+"=eth0")
	decoy := testnet.StartCmd(t, cmd)
	decoy.WaitLog(t, "decoy listening", 10*time.Second)
	nd.ns.RunTest(t, nil)
	// The decoy really was asked and really did answer: the test is not
	// passing because the bait never arrived.
	if !strings.Contains(decoy.Log(), "decoy answered "+dsHost+".") {
		t.Fatalf("the decoy never answered; its log:\n%s", decoy.Log())
	}
}

// TestAddressChange: the datastore moves to a new address while localds
// has the old one cached; the next dial fails, is resolved again at once
// and reaches the datastore at its new address.
func TestAddressChange(t *testing.T) {
	if testnet.IsChild(t) {
		app := testnet.ChildEnv("APP")
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second})
		dialer := resolver.NewDialer(d)
		if _, local := echoVia(t, dialer, dsHost+":7070"); local.Addr().String() != "10.77.1.2" {
			t.Fatalf("first dial reached %s, want 10.77.1.2", local)
		}
		// The container comes back with another address (a reboot); Avahi
		// follows it and announces the new one.
		for _, args := range [][]string{
			{"-n", app, "addr", "del", "10.77.1.2/24", "dev", "eth0"},
			{"-n", app, "addr", "add", "10.77.1.3/24", "dev", "eth0"},
		} {
			if out, err := execIP(args...); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		if res, _ := d.Resolve(context.Background(), dsHost); !res.Cached || res.Addr.String() != "10.77.1.2" {
			t.Fatalf("the old address must still be cached, got %+v", res)
		}
		if _, local := echoVia(t, dialer, dsHost+":7070"); local.Addr().String() != "10.77.1.3" {
			t.Fatalf("after the move the dial reached %s, want 10.77.1.3", local)
		}
		res, err := d.Resolve(context.Background(), dsHost)
		if err != nil || res.Addr.String() != "10.77.1.3" {
			t.Fatalf("cache must now hold 10.77.1.3, got %+v %v", res, err)
		}
		return
	}
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.avahi(t, "br0", dsName, nil)
	nd.echo(t, "br0")
	nd.ns.RunTest(t, map[string]string{"APP": nd.apps["br0"].Name})
}

// TestNoResponder: nobody answers; a clear error within the timeout.
func TestNoResponder(t *testing.T) {
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	bin := testnet.Binary(t, "localds")
	start := time.Now()
	out, err := nd.ns.Command(context.Background(), bin, "resolve", "--timeout", "700ms", dsHost).CombinedOutput()
	elapsed := time.Since(start)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("want a non-zero exit, got %v; output:\n%s", err, out)
	}
	msg := string(out)
	if !strings.Contains(msg, "no valid mDNS answer") || !strings.Contains(msg, "br0 (10.77.1.0/24): no answer") {
		t.Fatalf("unclear error:\n%s", msg)
	}
	// Bounded by the timeout, plus process start-up: not a speed goal.
	if elapsed > 700*time.Millisecond+5*time.Second {
		t.Fatalf("took %s with a 700ms timeout", elapsed)
	}
}

func execIP(args ...string) ([]byte, error) {
	return exec.Command("ip", args...).CombinedOutput()
}
