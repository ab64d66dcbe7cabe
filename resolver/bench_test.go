package resolver_test

import (
	"context"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/mdns"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// benchChildEnv marks the re-executed benchmark inside the node namespace.
const benchChildEnv = "LOCALDS_TESTNET_CHILD"

// BenchmarkResolveLatency measures, in one run against the real
// avahi-daemon on a test bridge, how long localds takes to resolve the
// datastore (uncached: every iteration forgets first) and how long
// hashicorp/mdns's Query of _workstation._tcp takes with its default
// settings. Goal: localds p99 under 20 ms, conflict window included; the
// same resolution without the window (ConflictWindow -1) is reported too,
// so the window's cost is read under the same load.
//
// hashicorp/mdns cannot run with pure defaults here: it joins the
// multicast group through the routing table, and a namespace without a
// default route (like an edge node's internal side) has no route for it,
// so the benchmark adds a multicast route on br0 for its sake; and its
// Query fails outright when the IPv6 send fails on an IPv4-only bridge. It
// is given the bridge as Interface and DisableIPv6, its only non-default
// parameters, and its log output is silenced. Its Query always waits the full Timeout (1 s by default), so
// the time to its first entry is reported too.
func BenchmarkResolveLatency(b *testing.B) {
	if os.Getenv(benchChildEnv) == b.Name() {
		benchResolveInNamespace(b)
		return
	}
	if testing.Short() {
		b.Skip("needs root and network namespaces (skipped by -short)")
	}
	n := testnet.New(b)
	node := n.Namespace("node")
	app := n.Namespace("app")
	n.Bridge(node, "br0", "10.77.1.1/24")
	n.Connect(node, "br0", app, "eth0", "10.77.1.2/24")
	testnet.StartAvahi(b, app, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
	// hashicorp/mdns joins the multicast group without naming an
	// interface, which needs a route to 224.0.0.0/4. A multicast route on
	// the bridge is not a default route; localds needs neither.
	node.Run(b, "ip", "route", "add", "224.0.0.0/4", "dev", "br0")

	// Run the measurement once, in the node namespace, with the same
	// -benchtime; its lines go to our output as the benchmark's result.
	args := []string{os.Args[0], "-test.run=^$", "-test.bench=^" + b.Name() + "$", "-test.benchmem=false"}
	if bt := benchtimeFlag(); bt != "" {
		args = append(args, "-test.benchtime="+bt)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := node.Command(ctx, args...)
	cmd.Env = append(os.Environ(), benchChildEnv+"="+b.Name())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("benchmark in the node namespace: %v", err)
	}
	b.Skip("measured in the node namespace; figures in the line above")
}

func benchtimeFlag() string { return flagLookup("test.benchtime") }

func benchResolveInNamespace(b *testing.B) {
	ctx := context.Background()
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 2 * time.Second})
	// The same without the conflict window, alternating with d, so the
	// window's cost is read under the same machine load.
	bare := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 2 * time.Second, ConflictWindow: -1})
	if _, err := d.Resolve(ctx, dsHost); err != nil { // warm ARP, as a running node would be
		b.Fatal(err)
	}
	resolveOnce := func(d *resolver.Discoverer) time.Duration {
		d.Forget(dsHost)
		start := time.Now()
		res, err := d.Resolve(ctx, dsHost)
		if err != nil {
			b.Fatal(err)
		}
		if res.Cached {
			b.Fatal("resolution was served from the cache")
		}
		return time.Since(start)
	}
	var local, noWindow []time.Duration
	b.ResetTimer()
	for b.Loop() {
		local = append(local, resolveOnce(d))
	}
	b.StopTimer()
	for range len(local) {
		noWindow = append(noWindow, resolveOnce(bare))
	}

	br0, err := net.InterfaceByName("br0")
	if err != nil {
		b.Fatal(err)
	}
	var total, first []time.Duration
	for range min(len(local), 10) {
		entries := make(chan *mdns.ServiceEntry, 16)
		params := mdns.DefaultParams("_workstation._tcp")
		params.Entries = entries
		params.Interface = br0
		params.DisableIPv6 = true
		params.Logger = log.New(io.Discard, "", 0)
		start := time.Now()
		firstAt := time.Duration(0)
		done := make(chan error, 1)
		go func() { done <- mdns.Query(params); close(entries) }()
		for e := range entries {
			if firstAt == 0 && e.AddrV4 != nil {
				firstAt = time.Since(start)
			}
		}
		if err := <-done; err != nil {
			b.Fatalf("hashicorp/mdns Query: %v", err)
		}
		total = append(total, time.Since(start))
		if firstAt == 0 {
			b.Fatal("hashicorp/mdns found no workstation with an IPv4 address")
		}
		first = append(first, firstAt)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	lp50, lp99 := quantile(local, 0.50), quantile(local, 0.99)
	hp50, hf50 := quantile(total, 0.50), quantile(first, 0.50)
	b.ReportMetric(ms(lp50), "localds-p50-ms")
	b.ReportMetric(ms(lp99), "localds-p99-ms")
	b.ReportMetric(ms(quantile(noWindow, 0.50)), "localds-nowindow-p50-ms")
	b.ReportMetric(ms(quantile(noWindow, 0.99)), "localds-nowindow-p99-ms")
	b.ReportMetric(ms(hp50), "mdns-query-p50-ms")
	b.ReportMetric(ms(quantile(total, 0.99)), "mdns-query-p99-ms")
	b.ReportMetric(ms(hf50), "mdns-first-entry-p50-ms")
	b.ReportMetric(float64(hp50)/float64(lp50), "query/localds-p50")
	b.ReportMetric(float64(hf50)/float64(lp50), "first-entry/localds-p50")
	b.ReportMetric(0, "ns/op")
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func flagLookup(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}
