package dsserver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/testnet"
)

// The datastore name EVE-OS documents.
const (
	dsName = "ubuntu-4321-http-server"
	dsHost = dsName + ".local"
	// pushToken is the test datastores' push token (--push-token-file).
	pushToken = "localds-test-push-token-0123456789"
)

// site is a test edge node: the node namespace with bridge br0
// (10.77.1.1/24) and the datastore's app namespace behind it (eth0,
// 10.77.1.2/24). More bridges and app links can be added.
type site struct {
	net       *testnet.Net
	node      *testnet.Namespace
	app       *testnet.Namespace
	bin       string
	tokenFile string // holds pushToken
}

func newSite(t testing.TB) *site {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs root and network namespaces (skipped by -short)")
	}
	n := testnet.New(t) // skips with a clear message when not root
	s := &site{net: n, node: n.Namespace("node"), app: n.Namespace("app")}
	n.Bridge(s.node, "br0", "10.77.1.1/24")
	n.Connect(s.node, "br0", s.app, "eth0", "10.77.1.2/24")
	s.bin = testnet.Binary(t, "localds")
	s.tokenFile = filepath.Join(t.TempDir(), "push-token")
	if err := os.WriteFile(s.tokenFile, []byte(pushToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// serve starts `localds serve` in the app namespace and waits until it
// answers mDNS (when it has an mDNS interface). It takes pushes with
// pushToken unless extra says otherwise ("--push-token-file", "" for none).
func (s *site) serve(t testing.TB, dir string, extra ...string) *testnet.Process {
	t.Helper()
	args := []string{s.bin, "serve", "--hostname", dsName, "--dir", dir, "--poll-interval", "200ms"}
	args = append(args, extra...)
	if !hasFlag(extra, "--push-token-file") {
		args = append(args, "--push-token-file", s.tokenFile)
	}
	if !hasFlag(extra, "--interface") {
		args = append(args, "--interface", "eth0")
	}
	if !hasFlag(extra, "--listen") {
		args = append(args, "--listen", ":80")
	}
	p := s.app.Start(t, args...)
	p.WaitLog(t, "mdns: answering", 15*time.Second)
	return p
}

func hasFlag(args []string, f string) bool {
	for _, a := range args {
		if a == f {
			return true
		}
	}
	return false
}

// resolve runs `localds resolve` in the node namespace and returns the
// first line of its output (the address) and the whole output.
func (s *site) resolve(t testing.TB, bridge string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.node.Command(ctx, s.bin, "resolve", "--interface", bridge, "--timeout", "3s", dsHost).CombinedOutput()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return first, string(out), err
}

// legacyQuery sends q from src (an address of ifname, random port) to dst
// from inside ns, the way the localds resolver does, and returns the first
// response with q's ID and where it came from. Bounded: 3 tries of 1 s.
func legacyQuery(t testing.TB, ns *testnet.Namespace, ifname, src, dst string, q *dns.Msg) (*dns.Msg, netip.AddrPort) {
	t.Helper()
	var resp *dns.Msg
	var from netip.AddrPort
	err := ns.Do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifname) }); err != nil {
				return err
			}
			return serr
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort(src, "0"))
		if err != nil {
			return err
		}
		defer pc.Close()
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		if err := ipv4.NewPacketConn(pc).SetMulticastInterface(ifi); err != nil {
			return err
		}
		b, err := q.Pack()
		if err != nil {
			return err
		}
		dstAddr := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst))
		buf := make([]byte, 9000)
		for try := 0; try < 3; try++ {
			if _, err := pc.WriteTo(b, dstAddr); err != nil {
				return fmt.Errorf("send: %w", err)
			}
			pc.SetReadDeadline(time.Now().Add(time.Second))
			for i := 0; i < 100; i++ {
				n, addr, err := pc.ReadFrom(buf)
				if errors.Is(err, syscall.EAGAIN) || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
					break
				}
				if err != nil {
					return err
				}
				var m dns.Msg
				if m.Unpack(buf[:n]) != nil || !m.Response || m.Id != q.Id {
					continue
				}
				resp, from = &m, addr.(*net.UDPAddr).AddrPort()
				return nil
			}
		}
		return errors.New("no response in 3 tries")
	})
	if err != nil {
		t.Fatalf("legacy query %v to %s on %s: %v", q.Question, dst, ifname, err)
	}
	return resp, from
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func newQuery(id uint16, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.Id = id
	m.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET | 1<<15}}
	return m
}

// aRecords returns the addresses of the A records named name in m.
func aRecords(m *dns.Msg, name string) []string {
	var out []string
	for _, rr := range append(append([]dns.RR{}, m.Answer...), m.Extra...) {
		if a, ok := rr.(*dns.A); ok && strings.EqualFold(a.Hdr.Name, name) {
			out = append(out, a.A.String())
		}
	}
	return out
}

// waitFor polls cond every 200 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// withPushToken adds the test datastores' push token to req.
func withPushToken(req *http.Request) *http.Request {
	req.Header.Set("Authorization", "Bearer "+pushToken)
	return req
}
