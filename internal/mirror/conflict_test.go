package mirror

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
)

// TestConflictNotRetried: a datastore name that two addresses claim (the
// resolver's errdefs.ErrConflict) is refused at once, with 502 naming the
// conflict: retrying cannot make one claimant the right one, and every
// retry would ask the bridge again for nothing.
func TestConflictNotRetried(t *testing.T) {
	var dials atomic.Int32
	m, err := New(Options{Scheme: SchemeHTTP, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return nil, fmt.Errorf("resolve %s: %w: more than one address claims the name: 10.0.0.2 and 10.0.0.66 on br0", dsHost, errdefs.ErrConflict)
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(func() { srv.Close(); m.Close() })
	resp, err := http.Get(srv.URL + "/v2/app/manifests/1?ns=" + dsHost)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials for a conflicting name, want 1 (no retry)", n)
	}
}
