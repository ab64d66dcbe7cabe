//go:build linux

// Package testnet builds throw-away test hosts for integration tests:
// network namespaces joined by Linux bridges and veth pairs, real daemons
// (Avahi) running inside them, and re-executed test binaries that run Go test
// code inside a namespace.
//
// The network rules of docs/design.md hold for everything here: packets only flow
// inside namespaces this package creates, those namespaces have no default
// route and no link to the host's interfaces, nothing is started in the root
// namespace, every wait is bounded, and everything is removed at t.Cleanup,
// also after a failure.
package testnet

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nsPrefix starts every namespace name this package creates, so stale ones
// from crashed runs can be recognised (and only those are ever swept).
const nsPrefix = "ldt"

// staleName matches "ldt<pid>-<n>-..." and captures the pid.
var staleName = regexp.MustCompile(`^` + nsPrefix + `([0-9]+)-[0-9]+-`)

// Bounds for commands and polls; every wait in this package is bounded.
const (
	ipTimeout      = 30 * time.Second
	runTimeout     = 2 * time.Minute
	linkUpTimeout  = 5 * time.Second
	pidsGoneTimout = 5 * time.Second
	pollInterval   = 20 * time.Millisecond
)

// nsSeq numbers namespaces within this process so names never collide,
// also between several Nets of one test binary.
var nsSeq atomic.Int64

// RequireRoot skips the test with a clear message when it cannot create
// network namespaces: not root, or iproute2's `ip` missing.
func RequireRoot(t testing.TB) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("testnet: needs root for network namespaces (running as uid %d)", uid)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("testnet: needs root for network namespaces and the `ip` command (iproute2), which is not installed")
	}
}

// Net owns every namespace it creates (and, through them, every link and
// process inside) and removes them in t.Cleanup, also after a failure, so no
// test leaves anything behind on the host.
type Net struct {
	t  testing.TB
	id string // random hex, makes temporary interface names unique per Net

	mu         sync.Mutex
	namespaces []*Namespace
	vethSeq    int
	closed     bool
}

// Namespace is one network namespace created by a Net: an isolated test host
// with only loopback and the links the test adds, and no default route.
type Namespace struct {
	// Name is the `ip netns` name (also /run/netns/<Name>).
	Name string

	net     *Net
	mu      sync.Mutex
	deleted bool
	// procs are the processes Start launched here. Delete kills them
	// itself: one that has not yet entered the namespace (ip netns exec
	// still starting) is not among `ip netns pids` and would survive.
	procs []*Process
}

// New returns a Net whose namespaces are all removed when t ends. It skips
// the test when not root, and sweeps stale namespaces left by crashed runs
// of this package (only names with our prefix whose pid is dead).
func New(t testing.TB) *Net {
	t.Helper()
	RequireRoot(t)
	if InChild() {
		t.Fatalf("testnet.New called inside a RunTest child (%s=%q): guard the parent-only setup with testnet.InChild()", childEnvVar, os.Getenv(childEnvVar))
	}
	sweepStale(t)
	n := &Net{t: t, id: randHex(3)}
	t.Cleanup(n.Close)
	return n
}

// Namespace creates a fresh network namespace named "ldt<pid>-<n>-<name>"
// with loopback up, no default route and no link to the host.
func (n *Net) Namespace(name string) *Namespace {
	n.t.Helper()
	full := fmt.Sprintf("%s%d-%d-%s", nsPrefix, os.Getpid(), nsSeq.Add(1), sanitize(name, 32))
	ns := &Namespace{Name: full, net: n}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		n.t.Fatalf("testnet: Namespace(%q) on a closed Net", name)
	}
	n.mu.Unlock()
	if out, err := ip("netns", "add", full); err != nil {
		n.t.Fatalf("testnet: create namespace %s: %v\n%s", full, err, out)
	}
	// Register before anything else can fail, so cleanup always removes it.
	n.mu.Lock()
	n.namespaces = append(n.namespaces, ns)
	n.mu.Unlock()
	n.mustIP("bring up lo in "+full, "-n", full, "link", "set", "lo", "up")
	return ns
}

// Bridge creates the Linux bridge `name` inside ns with address cidr (for
// example "10.77.1.1/24") and brings it up: the node's internal bridge.
func (n *Net) Bridge(ns *Namespace, name, cidr string) {
	n.t.Helper()
	checkIfName(n.t, name)
	what := fmt.Sprintf("bridge %s in %s", name, ns.Name)
	n.mustIP("create "+what, "-n", ns.Name, "link", "add", "name", name, "type", "bridge", "forward_delay", "0")
	if cidr != "" {
		n.mustIP("address "+what, "-n", ns.Name, "addr", "add", cidr, "dev", name)
	}
	n.mustIP("bring up "+what, "-n", ns.Name, "link", "set", name, "up")
}

// Connect plugs peer into bridge (which lives in bridgeNS) with a veth pair:
// the bridge end stays in bridgeNS, enslaved and up; the other end is moved
// into peer, renamed peerIf, given peerCIDR (if not empty) and brought up.
// It returns once both ends are up and the bridge port forwards (bounded).
func (n *Net) Connect(bridgeNS *Namespace, bridge string, peer *Namespace, peerIf, peerCIDR string) {
	n.t.Helper()
	checkIfName(n.t, peerIf)
	n.mu.Lock()
	n.vethSeq++
	seq := n.vethSeq
	n.mu.Unlock()
	// "lv" + 6 hex + seq + a/b: unique per Net and well under 15 chars.
	brEnd := fmt.Sprintf("lv%s%xa", n.id, seq)
	tmpPeer := fmt.Sprintf("lv%s%xb", n.id, seq)
	what := fmt.Sprintf("veth %s:%s -> %s:%s", bridgeNS.Name, bridge, peer.Name, peerIf)
	// Created inside bridgeNS directly: no interface ever appears in the root namespace.
	n.mustIP("create "+what, "-n", bridgeNS.Name, "link", "add", brEnd, "type", "veth", "peer", "name", tmpPeer, "netns", peer.Name)
	n.mustIP("enslave "+what, "-n", bridgeNS.Name, "link", "set", brEnd, "master", bridge)
	n.mustIP("bring up bridge end of "+what, "-n", bridgeNS.Name, "link", "set", brEnd, "up")
	n.mustIP("rename "+what, "-n", peer.Name, "link", "set", tmpPeer, "name", peerIf)
	if peerCIDR != "" {
		n.mustIP("address "+what, "-n", peer.Name, "addr", "add", peerCIDR, "dev", peerIf)
	}
	n.mustIP("bring up "+what, "-n", peer.Name, "link", "set", peerIf, "up")

	deadline := time.Now().Add(linkUpTimeout)
	for {
		peerOut, err1 := ip("-n", peer.Name, "-o", "link", "show", "dev", peerIf)
		brOut, err2 := ip("-n", bridgeNS.Name, "-d", "-o", "link", "show", "dev", brEnd)
		if err1 == nil && err2 == nil && strings.Contains(peerOut, "state UP") &&
			strings.Contains(brOut, "state UP") && strings.Contains(brOut, "state forwarding") {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("testnet: %s not up after %v:\npeer: %s %v\nbridge port: %s %v", what, linkUpTimeout, peerOut, err1, brOut, err2)
		}
		time.Sleep(pollInterval)
	}
}

// Close deletes every namespace of n now (killing what still runs inside).
// It runs automatically at t.Cleanup; calling it earlier is allowed and
// later calls do nothing.
func (n *Net) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	nss := append([]*Namespace(nil), n.namespaces...)
	n.mu.Unlock()
	for i := len(nss) - 1; i >= 0; i-- {
		if err := nss[i].Delete(); err != nil {
			n.t.Errorf("testnet: cleanup: %v", err)
		}
	}
}

// Delete kills every process left inside ns and removes the namespace; its
// links go with it. For "host vanished" tests; Net.Close calls it too.
func (ns *Namespace) Delete() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.deleted {
		return nil
	}
	ns.deleted = true
	var errs []error
	for _, p := range ns.procs {
		errs = append(errs, p.Kill())
	}
	return errors.Join(append(errs, deleteNamespace(ns.Name))...)
}

// Run runs args inside ns (`ip netns exec`) and returns the combined output;
// it fails the test with that output on error. Bounded by a 2-minute timeout.
func (ns *Namespace) Run(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	out, err := ns.Command(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testnet: in %s: %s: %v\n%s", ns.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command returns an unstarted `ip netns exec <ns> args...` command, for
// callers that need their own stdin/stdout, environment or timeout.
func (ns *Namespace) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// SetAddr changes an interface address inside ns (removes oldCIDR, adds
// newCIDR; either may be empty), e.g. for "datastore address changed" tests.
func (ns *Namespace) SetAddr(t testing.TB, ifname, oldCIDR, newCIDR string) {
	t.Helper()
	if oldCIDR != "" {
		if out, err := ip("-n", ns.Name, "addr", "del", oldCIDR, "dev", ifname); err != nil {
			t.Fatalf("testnet: remove %s from %s in %s: %v\n%s", oldCIDR, ifname, ns.Name, err, out)
		}
	}
	if newCIDR != "" {
		if out, err := ip("-n", ns.Name, "addr", "add", newCIDR, "dev", ifname); err != nil {
			t.Fatalf("testnet: add %s to %s in %s: %v\n%s", newCIDR, ifname, ns.Name, err, out)
		}
	}
}

// Do runs fn on an OS thread switched into ns. Sockets that fn creates stay
// in ns after Do returns, so a test can listen or dial inside ns without
// re-executing itself. Only fn's own thread is in ns: goroutines it starts,
// name lookups and child processes are not.
func (ns *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testnet: open own netns: %w", err)
			return
		}
		defer origin.Close()
		target, err := os.Open("/run/netns/" + ns.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testnet: open netns %s: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testnet: enter netns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(origin.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime discards it when this
			// goroutine exits, so no other code runs in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("testnet: leave netns %s: %w", ns.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ip runs one iproute2 command with a timeout and returns its combined output.
func ip(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

func (n *Net) mustIP(what string, args ...string) {
	n.t.Helper()
	if out, err := ip(args...); err != nil {
		n.t.Fatalf("testnet: %s: %v\n%s", what, err, out)
	}
}

// deleteNamespace kills what still runs in the namespace, waits (bounded)
// for it to be gone and deletes the namespace.
func deleteNamespace(name string) error {
	deadline := time.Now().Add(pidsGoneTimout)
	for {
		pids, err := namespacePids(name)
		if err != nil || len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s: processes %v still alive after SIGKILL", name, pids)
		}
		time.Sleep(pollInterval)
	}
	if out, err := ip("netns", "del", name); err != nil {
		if _, serr := os.Stat("/run/netns/" + name); errors.Is(serr, os.ErrNotExist) {
			return nil // someone else (a parallel sweep) removed it
		}
		return fmt.Errorf("delete namespace %s: %w: %s", name, err, strings.TrimSpace(out))
	}
	return nil
}

func namespacePids(name string) ([]int, error) {
	out, err := ip("netns", "pids", name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// sweepStale removes namespaces that carry our prefix and whose creating
// process is dead (a run that crashed before its cleanup). Anything else,
// including namespaces of concurrent runs, is left alone.
func sweepStale(t testing.TB) {
	out, err := ip("netns", "list")
	if err != nil {
		t.Logf("testnet: list namespaces for the stale sweep: %v", err)
		return
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		m := staleName.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid <= 0 || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		if err := deleteNamespace(name); err != nil {
			t.Logf("testnet: stale sweep: %v", err)
		} else {
			t.Logf("testnet: removed stale namespace %s (pid %d is gone)", name, pid)
		}
	}
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func checkIfName(t testing.TB, name string) {
	t.Helper()
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t\n:") {
		t.Fatalf("testnet: bad interface name %q (1..15 chars, no '/', ':' or spaces)", name)
	}
}

// sanitize keeps [A-Za-z0-9_-] and cuts to max, for names used in paths.
func sanitize(s string, max int) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(b) < max; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b = append(b, c)
		default:
			b = append(b, '_')
		}
	}
	if len(b) == 0 {
		return "x"
	}
	return string(b)
}

func randHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
