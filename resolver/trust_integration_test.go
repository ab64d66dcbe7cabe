package resolver_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// claim starts the claimant peer (claim_peer_test.go) in a new app
// namespace named name on bridge br at cidr, answering for dsHost with
// addr and ttl.
func (nd *node) claim(t *testing.T, name, br, cidr, addr, ttl string) *testnet.Process {
	t.Helper()
	app := nd.net.Namespace(name)
	nd.net.Connect(nd.ns, br, app, "eth0", cidr)
	cmd := app.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), envClaim+"=eth0 "+dsHost+" "+addr+" "+ttl)
	p := testnet.StartCmd(t, cmd)
	p.WaitLog(t, "claim listening", 10*time.Second)
	return p
}

// TestConflictCLI: the real datastore (Avahi) at 10.77.1.2 and a
// non-probing neighbour at 10.77.1.3 answering for the same name with its
// own address, both on br0. `localds resolve` exits non-zero with a
// conflict that names both addresses and the bridge, whichever answered
// first.
func TestConflictCLI(t *testing.T) {
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.avahi(t, "br0", dsName, nil)
	hostile := nd.claim(t, "hostile", "br0", "10.77.1.3/24", "10.77.1.3", "120")
	bin := testnet.Binary(t, "localds")

	out, err := nd.ns.Command(context.Background(), bin, "resolve", "--timeout", "3s", dsHost).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("want a non-zero exit, got %v; output:\n%s", err, out)
	}
	for _, want := range []string{"conflict", "10.77.1.2", "10.77.1.3", "br0 (10.77.1.0/24)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(hostile.Log(), "claim answered") {
		t.Fatalf("the neighbour was never asked; its log:\n%s", hostile.Log())
	}
}

// TestConflictCounted: the Discoverer returns errdefs.ErrConflict and
// counts it; a second resolution is refused the same way (nothing cached).
func TestConflictCounted(t *testing.T) {
	if testnet.IsChild(t) {
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second})
		for i := range 2 {
			res, err := d.Resolve(context.Background(), dsHost)
			if !errdefs.IsConflict(err) {
				t.Fatalf("resolution %d: want a conflict, got %+v %v", i, res, err)
			}
		}
		if n := d.Conflicts(); n != 2 {
			t.Fatalf("Conflicts() = %d, want 2", n)
		}
		return
	}
	// Two non-probing responders, neither of them Avahi: the conflict
	// does not depend on who answers first.
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.claim(t, "claim-a", "br0", "10.77.1.3/24", "10.77.1.3", "120")
	nd.claim(t, "claim-b", "br0", "10.77.1.4/24", "10.77.1.4", "120")
	nd.ns.RunTest(t, nil)
}

// TestDatastoreOnTwoBridges: one datastore name answered on two bridges,
// one address on each (two Avahi daemons, one per link, so neither
// conflicts with the other). Not a conflict: the bridge that answers
// first is used.
func TestDatastoreOnTwoBridges(t *testing.T) {
	nd := newNode(t, map[string]string{"br0": "10.77.1", "bn1": "10.78.1"})
	nd.avahi(t, "br0", dsName, nil)
	nd.avahi(t, "bn1", dsName, nil)
	bin := testnet.Binary(t, "localds")
	out := nd.ns.Run(t, bin, "resolve", "--timeout", "3s", dsHost)
	first := strings.SplitN(out, "\n", 2)[0]
	if first != "10.77.1.2" && first != "10.78.1.2" {
		t.Fatalf("resolved %q, want one of the two datastore addresses; output:\n%s", first, out)
	}
}

// TestShortTTLExpires: an answer with TTL 1 s is cached for 1 s, not the
// cache's 2 minutes.
func TestShortTTLExpires(t *testing.T) {
	if testnet.IsChild(t) {
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second, CacheTTL: 2 * time.Minute})
		res, err := d.Resolve(context.Background(), dsHost)
		if err != nil || res.TTL != time.Second || res.Addr.String() != "10.77.1.3" {
			t.Fatalf("want 10.77.1.3 with TTL 1s, got %+v %v", res, err)
		}
		// Past the TTL (not a speed goal: the record says 1 s).
		time.Sleep(1500 * time.Millisecond)
		res, err = d.Resolve(context.Background(), dsHost)
		if err != nil || res.Cached {
			t.Fatalf("a TTL-1 answer must have expired after 1.5 s, got %+v %v", res, err)
		}
		return
	}
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.claim(t, "claim", "br0", "10.77.1.3/24", "10.77.1.3", "1")
	nd.ns.RunTest(t, nil)
}

// TestGoodbyeEvicts: the responder multicasts a goodbye (TTL 0) for the
// cached address; the next resolution asks again instead of using the
// cache, although the answer's TTL (120 s) has not run out.
func TestGoodbyeEvicts(t *testing.T) {
	if testnet.IsChild(t) {
		ctx := context.Background()
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second})
		if _, err := d.Resolve(ctx, dsHost); err != nil {
			t.Fatal(err)
		}
		if res, err := d.Resolve(ctx, dsHost); err != nil || !res.Cached {
			t.Fatalf("second resolution must come from the cache, got %+v %v", res, err)
		}
		// Ask the peer to say goodbye (it answers nothing to this name).
		probe := resolver.NewDiscoverer(resolver.Options{Timeout: 300 * time.Millisecond, CacheTTL: -1})
		probe.Resolve(ctx, "bye-"+dsHost)
		// The goodbye is multicast at once; wait for the watcher to act on
		// it, a bounded number of times.
		for range 50 {
			res, err := d.Resolve(ctx, dsHost)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Cached {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("the goodbye never evicted the cached address")
	}
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	p := nd.claim(t, "claim", "br0", "10.77.1.3/24", "10.77.1.3", "120")
	nd.ns.RunTest(t, nil)
	if !strings.Contains(p.Log(), "claim said goodbye") {
		t.Fatalf("the peer never said goodbye; its log:\n%s", p.Log())
	}
}

// TestOwnAddressRefused: a neighbour answers for the datastore's name with
// the bridge's own address (the node itself). It is refused like any
// invalid answer: not found, nothing dialed.
func TestOwnAddressRefused(t *testing.T) {
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	p := nd.claim(t, "claim", "br0", "10.77.1.3/24", "10.77.1.1", "120")
	bin := testnet.Binary(t, "localds")
	out, err := nd.ns.Command(context.Background(), bin, "resolve", "--timeout", "700ms", dsHost).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(string(out), "no valid mDNS answer") {
		t.Fatalf("want not found, got %v:\n%s", err, out)
	}
	if !strings.Contains(p.Log(), "claim answered") {
		t.Fatalf("the neighbour was never asked; its log:\n%s", p.Log())
	}
}

// TestConflictRefusesPull: `localds pull` of an archive from the
// datastore's name, with a neighbour claiming the name too, refuses to
// fetch: a non-zero exit with the conflict (both addresses, the bridge)
// and nothing asked of either address over HTTP.
func TestConflictRefusesPull(t *testing.T) {
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.avahi(t, "br0", dsName, nil)
	nd.claim(t, "hostile", "br0", "10.77.1.3/24", "10.77.1.3", "120")
	ctrd := nd.ns.StartContainerd(t, testnet.ContainerdOptions{})
	bin := testnet.Binary(t, "localds")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := nd.ns.Command(ctx, bin, "--address", ctrd.Address, "--root", t.TempDir(), "pull",
		"http://"+dsHost+"/images/app.oci.tar", "app:1").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("want a non-zero exit, got %v; output:\n%s", err, out)
	}
	for _, want := range []string{"conflict", "10.77.1.2", "10.77.1.3", "br0 (10.77.1.0/24)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("pull's error lacks %q:\n%s", want, out)
		}
	}
}
