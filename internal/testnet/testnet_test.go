//go:build linux

package testnet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// twoHosts is the common fixture: "node" with bridge br0 10.77.1.1/24 and
// "ds" plugged into it as eth0 10.77.1.2/24.
func twoHosts(t *testing.T) (*Net, *Namespace, *Namespace) {
	n := New(t)
	node := n.Namespace("node")
	ds := n.Namespace("ds")
	n.Bridge(node, "br0", "10.77.1.1/24")
	n.Connect(node, "br0", ds, "eth0", "10.77.1.2/24")
	return n, node, ds
}

func TestPingRoutesAndAddressChange(t *testing.T) {
	start := time.Now()
	n, node, ds := twoHosts(t)
	t.Logf("setup of 2 namespaces, bridge and veth: %v", time.Since(start).Round(time.Millisecond))

	if err := ds.Ping("10.77.1.1", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := node.Ping("10.77.1.2", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// No default route: anything off-subnet is unreachable, at once.
	if err := ds.Ping("10.99.0.1", time.Second); err == nil {
		t.Fatal("ping to an off-subnet address succeeded; the namespace must have no default route")
	}
	for _, ns := range []*Namespace{node, ds} {
		if out := ns.Run(t, "ip", "-4", "route", "show", "default"); strings.TrimSpace(out) != "" {
			t.Errorf("%s has a default route: %s", ns.Name, out)
		}
		if out := ns.Run(t, "ip", "-6", "route", "show", "default"); strings.TrimSpace(out) != "" {
			t.Errorf("%s has an IPv6 default route: %s", ns.Name, out)
		}
	}
	// Only our links inside, and none of our links in the root namespace.
	if got := linkNames(t, ds); strings.Join(got, ",") != "eth0,lo" {
		t.Errorf("links in ds = %v, want [eth0 lo]", got)
	}
	if got := linkNames(t, node); len(got) != 3 || got[0] != "br0" || got[1] != "lo" || !strings.HasPrefix(got[2], "lv"+n.id) {
		t.Errorf("links in node = %v, want br0, lo, lv%s...", got, n.id)
	}
	root, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link in root namespace: %v\n%s", err, root)
	}
	if strings.Contains(string(root), "lv"+n.id) {
		t.Errorf("a veth of this Net appeared in the root namespace:\n%s", root)
	}

	ds.SetAddr(t, "eth0", "10.77.1.2/24", "10.77.1.3/24")
	if err := node.Ping("10.77.1.3", 2*time.Second); err != nil {
		t.Fatalf("after SetAddr: %v", err)
	}
	if err := node.Ping("10.77.1.2", 500*time.Millisecond); err == nil {
		t.Fatal("old address still answers after SetAddr")
	}
}

func linkNames(t *testing.T, ns *Namespace) []string {
	t.Helper()
	var names []string
	for _, line := range strings.Split(ns.Run(t, "ip", "-o", "link", "show"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func TestCloseRemovesNamespacesAndProcesses(t *testing.T) {
	n := New(t)
	ns := n.Namespace("gone")
	p := ns.Start(t, "sleep", "600")
	n.Close()
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("process inside a closed namespace still runs")
	}
	if _, err := os.Stat("/run/netns/" + ns.Name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run/netns/%s still there after Close: %v", ns.Name, err)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), ns.Name) {
		t.Errorf("%s still listed after Close:\n%s", ns.Name, out)
	}
	n.Close() // idempotent
}

func TestStaleSweep(t *testing.T) {
	RequireRoot(t)
	// A pid that is certainly dead: a child we ran and reaped.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// A live process that is not us: its namespace must survive.
	live := exec.Command("sleep", "600")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Process.Kill(); _ = live.Wait() })

	stale := fmt.Sprintf("%s%d-1-stale", nsPrefix, dead.Process.Pid)
	alive := fmt.Sprintf("%s%d-1-alive", nsPrefix, live.Process.Pid)
	for _, name := range []string{stale, alive} {
		if out, err := ip("netns", "add", name); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		t.Cleanup(func() { _ = deleteNamespace(name) })
	}
	New(t)
	if _, err := os.Stat("/run/netns/" + stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace %s (dead pid) not swept: %v", stale, err)
	}
	if _, err := os.Stat("/run/netns/" + alive); err != nil {
		t.Errorf("namespace %s of a live pid was swept: %v", alive, err)
	}
}

func TestProcessStopKillWaitLog(t *testing.T) {
	n := New(t)
	ns := n.Namespace("proc")
	p := ns.Start(t, "sh", "-c", `trap 'echo got-term; exit 0' TERM; echo ready; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`)
	p.WaitLog(t, "ready", 5*time.Second)
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Log(), "got-term") {
		t.Errorf("Stop did not send SIGTERM first; log:\n%s", p.Log())
	}
	if done, _ := p.Exited(); !done {
		t.Error("process not reaped after Stop")
	}

	// A process that ignores SIGTERM is killed after the grace period.
	p2 := ns.Start(t, "sh", "-c", `trap '' TERM; echo ready; sleep 600`)
	p2.WaitLog(t, "ready", 5*time.Second)
	if err := p2.Kill(); err != nil {
		t.Fatal(err)
	}
	if done, _ := p2.Exited(); !done {
		t.Error("process not reaped after Kill")
	}

	// The short-lived process: Wait gives its exit status.
	p3 := ns.Start(t, "sh", "-c", "echo bye; exit 3")
	var ee *exec.ExitError
	if err := p3.Wait(5 * time.Second); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("Wait = %v, want exit status 3", err)
	}
	if !strings.Contains(p3.Log(), "bye") {
		t.Errorf("log = %q", p3.Log())
	}
}

// hostAvahiState is what the host's Avahi directories and mounts look like;
// a test daemon must leave it exactly as it was.
func hostAvahiState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, dir := range []string{"/run/avahi-daemon", avahiServicesDir} {
		entries, err := os.ReadDir(dir)
		fmt.Fprintf(&b, "%s err=%v:", dir, err)
		for _, e := range entries {
			fmt.Fprintf(&b, " %s", e.Name())
		}
		b.WriteString("\n")
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "avahi") || strings.Contains(l, "localds-testnet") || strings.Contains(l, " /run ") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func TestAvahiTwoDaemons(t *testing.T) {
	RequireAvahi(t)
	n, node, ds := twoHosts(t)
	other := n.Namespace("other")
	n.Connect(node, "br0", other, "eth0", "10.77.1.3/24")
	before := hostAvahiState(t)

	start := time.Now()
	dsd := StartAvahi(t, ds, AvahiConfig{
		HostName:        "ubuntu-4321-http-server",
		AllowInterfaces: []string{"eth0"},
		Services:        map[string]string{"http": AvahiService("_http._tcp", 80)},
	})
	t.Logf("first avahi-daemon ready after %v", time.Since(start).Round(time.Millisecond))
	no := false
	otherd := StartAvahi(t, other, AvahiConfig{
		HostName:           "other-ds",
		AllowInterfaces:    []string{"eth0"},
		PublishWorkstation: &no,
	})
	t.Logf("both avahi-daemons ready after %v", time.Since(start).Round(time.Millisecond))
	if strings.Contains(dsd.Log(), "already running") || strings.Contains(otherd.Log(), "already running") {
		t.Fatal("the two daemons saw each other's pid file")
	}

	// Each daemon's pid file is in its own private /run.
	for _, p := range []*Process{dsd, otherd} {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(p.Pid()), "-m", "cat", "/run/avahi-daemon/pid").CombinedOutput()
		if err != nil {
			t.Fatalf("read private pid file of %d: %v\n%s", p.Pid(), err, out)
		}
		if strings.TrimSpace(string(out)) != strconv.Itoa(p.Pid()) {
			t.Errorf("private pid file of %d says %q", p.Pid(), out)
		}
	}

	// Raw mDNS check from the node: legacy unicast questions (source port
	// not 5353) to each daemon's address.
	a := mdnsQuery(t, node, "10.77.1.2", "ubuntu-4321-http-server.local.", dns.TypeA)
	if !hasA(a, "ubuntu-4321-http-server.local.", "10.77.1.2") {
		t.Errorf("A answer from ds avahi: %v", a)
	}
	ptr := mdnsQuery(t, node, "10.77.1.2", "_http._tcp.local.", dns.TypePTR)
	if len(ptr) == 0 || !strings.Contains(ptr[0].String(), "ubuntu-4321-http-server._http._tcp.local.") {
		t.Errorf("PTR _http._tcp answer from ds avahi: %v", ptr)
	}
	a = mdnsQuery(t, node, "10.77.1.3", "other-ds.local.", dns.TypeA)
	if !hasA(a, "other-ds.local.", "10.77.1.3") {
		t.Errorf("A answer from other avahi: %v", a)
	}

	for _, p := range []*Process{dsd, otherd} {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
		if !strings.Contains(p.Log(), "Got SIGTERM, quitting.") {
			t.Errorf("avahi-daemon %d did not quit on SIGTERM; log:\n%s", p.Pid(), p.Log())
		}
	}
	if after := hostAvahiState(t); after != before {
		t.Errorf("host Avahi state changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func hasA(rrs []dns.RR, name, ip string) bool {
	for _, rr := range rrs {
		if a, ok := rr.(*dns.A); ok && strings.EqualFold(a.Hdr.Name, name) && a.A.String() == ip {
			return true
		}
	}
	return false
}

// mdnsQuery sends one legacy-unicast mDNS question from inside ns to
// server:5353 and returns the answers, retrying a bounded number of times.
func mdnsQuery(t *testing.T, ns *Namespace, server, name string, qtype uint16) []dns.RR {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		conn = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = false
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.UDPAddr{IP: net.ParseIP(server), Port: 5353}
	buf := make([]byte, 9000)
	for try := 0; try < 5; try++ {
		if _, err := conn.WriteToUDP(wire, dst); err != nil {
			t.Fatalf("send mDNS question from %s: %v", ns.Name, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			nr, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				break // timeout: ask again
			}
			var m dns.Msg
			if from.Port != 5353 || m.Unpack(buf[:nr]) != nil || !m.Response || m.Id != q.Id {
				continue
			}
			return m.Answer
		}
	}
	t.Fatalf("no mDNS answer from %s for %s %s", server, name, dns.TypeToString[qtype])
	return nil
}

// TestRunTest re-executes this test inside the node namespace: the child
// sees the bridge and none of the host's links, and reaches a listener the
// parent opened in the ds namespace.
func TestRunTest(t *testing.T) {
	if IsChild(t) {
		ifs, err := net.Interfaces()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ifc := range ifs {
			names = append(names, ifc.Name)
		}
		if !strings.Contains(","+strings.Join(names, ",")+",", ",br0,") {
			t.Fatalf("child is not in the node namespace: interfaces %v", names)
		}
		for _, host := range strings.Split(ChildEnv("HOST_IFS"), ",") {
			if host != "" && host != "lo" && strings.Contains(","+strings.Join(names, ",")+",", ","+host+",") {
				t.Fatalf("child sees host interface %s: %v", host, names)
			}
		}
		c, err := net.DialTimeout("tcp", ChildEnv("ADDR"), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "hello from ds" {
			t.Fatalf("read %q, %v", b, err)
		}
		t.Log("child ok")
		return
	}
	_, node, ds := twoHosts(t)
	var ln net.Listener
	if err := ds.Do(func() error {
		l, err := net.Listen("tcp4", "10.77.1.2:0")
		ln = l
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("hello from ds"))
		c.Close()
	}()
	hostIfs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ifc := range hostIfs {
		names = append(names, ifc.Name)
	}
	start := time.Now()
	node.RunTest(t, map[string]string{"ADDR": ln.Addr().String(), "HOST_IFS": strings.Join(names, ",")})
	t.Logf("RunTest took %v", time.Since(start).Round(time.Millisecond))
}

// TestRunTestSubtest: a child for a subtest; the parent's setup is guarded.
func TestRunTestSubtest(t *testing.T) {
	var node *Namespace
	if !InChild() {
		_, node, _ = twoHosts(t)
	}
	t.Run("in node (x.y)", func(t *testing.T) {
		if IsChild(t) {
			if _, err := net.InterfaceByName("br0"); err != nil {
				t.Fatalf("child not in node namespace: %v", err)
			}
			if ChildEnv("K") != "v w" {
				t.Fatalf("ChildEnv(K) = %q", ChildEnv("K"))
			}
			return
		}
		node.RunTest(t, map[string]string{"K": "v w"})
	})
}

func TestRunPattern(t *testing.T) {
	if got, want := RunPattern("TestA/in_node_(x.y)"), `^TestA$/^in_node_\(x\.y\)$`; got != want {
		t.Errorf("RunPattern = %q, want %q", got, want)
	}
}

func TestBinary(t *testing.T) {
	// $LOCALDS_BIN_DIR wins when it holds the command.
	dir := t.TempDir()
	fake := filepath.Join(dir, "fakecmd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LOCALDS_BIN_DIR", dir)
	if got := Binary(t, "fakecmd"); got != fake {
		t.Errorf("Binary = %q, want %q", got, fake)
	}

	root, err := ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	if gomod, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !strings.Contains(string(gomod), "module github.com/localds/localds") {
		t.Errorf("ModuleRoot = %q: go.mod %v", root, err)
	}

	// The build path itself, on a tiny module of its own (the project's
	// commands are built by the tests that use them).
	mod := t.TempDir()
	if err := os.MkdirAll(filepath.Join(mod, "cmd", "hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/hello\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from cmd\") }\n"
	if err := os.WriteFile(filepath.Join(mod, "cmd", "hello", "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "hello")
	if err := goBuild(mod, "./cmd/hello", out); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(out).CombinedOutput(); err != nil || string(b) != "hello from cmd\n" {
		t.Errorf("built command: %q, %v", b, err)
	}
}
