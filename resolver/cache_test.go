package resolver

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestCacheExpiryAndForget(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	c := newCache(2*time.Minute, clk.now)
	r0 := Result{Host: testHost, Interface: "br0", Addr: netip.MustParseAddr("10.77.1.2")}
	c.put(r0)
	clk.t = clk.t.Add(time.Minute)
	r1 := Result{Host: testHost, Interface: "bn1", Addr: netip.MustParseAddr("10.78.1.2")}
	c.put(r1)

	if got, ok := c.get(testHost); !ok || got.Interface != "bn1" {
		t.Fatalf("want the freshest entry (bn1), got %+v %v", got, ok)
	}
	c.forget(testHost, "bn1")
	if got, ok := c.get(testHost); !ok || got.Interface != "br0" {
		t.Fatalf("forgetting bn1 must keep br0, got %+v %v", got, ok)
	}
	clk.t = clk.t.Add(61 * time.Second)
	if got, ok := c.get(testHost); ok {
		t.Fatalf("br0 entry must have expired, got %+v", got)
	}
	if _, ok := c.get("other.local."); ok {
		t.Fatal("unknown host found")
	}
}

func TestDiscovererServesCacheAndForgets(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	// An interface glob that matches nothing: a cache miss fails fast and
	// sends nothing, so this test never touches a network.
	d := NewDiscoverer(Options{Interfaces: []string{"no-such-interface-*"}, Now: clk.now})
	d.cache.put(Result{Host: testHost, Interface: "br0", Addr: netip.MustParseAddr("10.77.1.2"), Source: netip.MustParseAddr("10.77.1.1")})

	res, err := d.Resolve(context.Background(), "Ubuntu-4321-HTTP-Server.local:5000")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Cached || res.Addr != netip.MustParseAddr("10.77.1.2") {
		t.Fatalf("want cached 10.77.1.2, got %+v", res)
	}
	d.Forget("ubuntu-4321-http-server.local")
	if _, err := d.Resolve(context.Background(), testHost); err == nil {
		t.Fatal("after Forget, resolution must ask again (and fail here)")
	}
}

func TestDiscovererRejectsNonLocal(t *testing.T) {
	d := NewDiscoverer(Options{Interfaces: []string{"no-such-interface-*"}})
	if _, err := d.Resolve(context.Background(), "registry.example.com"); err == nil {
		t.Fatal("a non-.local name must be refused")
	}
}

// BenchmarkResolveCached measures a lookup served from the cache, the path
// every connection after the first takes. Goal: under 1 µs.
func BenchmarkResolveCached(b *testing.B) {
	d := NewDiscoverer(Options{Interfaces: []string{"no-such-interface-*"}})
	d.cache.put(Result{Host: testHost, Interface: "br0", Addr: netip.MustParseAddr("10.77.1.2")})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Resolve(ctx, "ubuntu-4321-http-server.local"); err != nil {
			b.Fatal(err)
		}
	}
}
