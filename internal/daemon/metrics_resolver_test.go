package daemon

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localds/localds/resolver"
)

// TestResolverConflictMetric: /metrics carries the resolver's conflict
// count (the count itself is tested against real responders in resolver's
// TestConflictCounted).
func TestResolverConflictMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	registerResolverMetrics(reg, resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"no-such-interface-*"}}))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "localds_resolver_conflicts_total" && len(f.GetMetric()) == 1 {
			return
		}
	}
	t.Fatal("localds_resolver_conflicts_total not exposed")
}
