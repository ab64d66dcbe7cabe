package dsserver_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localds/localds/internal/testnet"
)

// TestServeFoundByResolver: `localds serve` in the app namespace, with
// links on two bridges, is found by `localds resolve` from the node on each
// bridge with that bridge's address only; a raw legacy-unicast query shows
// the reply's shape; an address change is followed without restart.
func TestServeFoundByResolver(t *testing.T) {
	s := newSite(t)
	s.net.Bridge(s.node, "br1", "10.77.2.1/24")
	s.net.Connect(s.node, "br1", s.app, "eth1", "10.77.2.2/24")
	mac := strings.TrimSpace(s.app.Run(t, "cat", "/sys/class/net/eth0/address"))
	s.serve(t, t.TempDir(), "--interface", "eth0", "--interface", "eth1")

	for br, want := range map[string]string{"br0": "10.77.1.2", "br1": "10.77.2.2"} {
		got, out, err := s.resolve(t, br)
		if err != nil || got != want {
			t.Fatalf("resolve on %s: %q (err %v), want %s; output:\n%s", br, got, err, want, out)
		}
	}

	// The resolver's own question, multicast on br0 from a random port.
	m, from := legacyQuery(t, s.node, "br0", "10.77.1.1", "224.0.0.251:5353", newQuery(0x4242, dsHost+".", dns.TypeA))
	if from.String() != "10.77.1.2:5353" || len(m.Question) != 1 || m.Question[0].Name != dsHost+"." {
		t.Fatalf("A reply from %v with question %v", from, m.Question)
	}
	if got := aRecords(m, dsHost+"."); len(got) != 1 || got[0] != "10.77.1.2" {
		t.Fatalf("A reply on br0 carries %v, want only 10.77.1.2 (never eth1's address)", got)
	}
	for _, a := range m.Answer {
		if a.Header().Ttl > 10 {
			t.Fatalf("legacy reply TTL %d > 10", a.Header().Ttl)
		}
	}

	// The workstation browse: Avahi's instance name, SRV target and A in one reply.
	m, _ = legacyQuery(t, s.node, "br0", "10.77.1.1", "224.0.0.251:5353", newQuery(0x4343, "_workstation._tcp.local.", dns.TypePTR))
	wantInstance := dsName + `\ [` + mac + `]._workstation._tcp.local.`
	if len(m.Answer) != 1 || m.Answer[0].(*dns.PTR).Ptr != wantInstance {
		t.Fatalf("workstation PTR %v, want %s", m.Answer, wantInstance)
	}
	var srv *dns.SRV
	for _, rr := range m.Extra {
		if r, ok := rr.(*dns.SRV); ok {
			srv = r
		}
	}
	if srv == nil || srv.Target != dsHost+"." || srv.Hdr.Name != wantInstance {
		t.Fatalf("workstation SRV %v", srv)
	}
	if got := aRecords(m, dsHost+"."); len(got) != 1 || got[0] != "10.77.1.2" {
		t.Fatalf("workstation additional A %v", got)
	}
	m, _ = legacyQuery(t, s.node, "br1", "10.77.2.1", "224.0.0.251:5353", newQuery(0x4444, "_http._tcp.local.", dns.TypePTR))
	if got := aRecords(m, dsHost+"."); len(got) != 1 || got[0] != "10.77.2.2" {
		t.Fatalf("http browse on br1: A %v, want only 10.77.2.2", got)
	}

	// The datastore's address changes: answered within a few polls.
	s.app.SetAddr(t, "eth0", "10.77.1.2/24", "10.77.1.3/24")
	var last string
	if !waitFor(10*time.Second, func() bool { last, _, _ = s.resolve(t, "br0"); return last == "10.77.1.3" }) {
		t.Fatalf("after the address change resolve says %q, want 10.77.1.3", last)
	}
}

// dbusConf is a private system bus for the node's avahi-daemon, so that
// the real avahi-resolve and avahi-browse can ask it.
const dbusConf = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

// avahiScript runs, inside the node namespace and its own mount namespace
// (`ip netns exec`), a private D-Bus and avahi-daemon (allow-interfaces=br0,
// /run on a private tmpfs), asks them with avahi-resolve and avahi-browse,
// and stops them. Every wait is bounded.
const avahiScript = `set -e
mount -t tmpfs -o mode=0755,size=4m localds-serve-test /run
mkdir -p /run/dbus /run/avahi-daemon
mount --bind "$3" /etc/avahi/services
dbus-daemon --config-file="$2" --fork --print-pid=3 3>/run/dbus.pid
avahi-daemon -f "$1" --no-drop-root --no-chroot --no-rlimits --debug >/run/avahi.log 2>&1 &
apid=$!
trap 'kill $apid $(cat /run/dbus.pid) 2>/dev/null || true; sleep 0.2' EXIT
i=0
until grep -q "Server startup complete" /run/avahi.log; do
  i=$((i+1)); [ $i -lt 100 ] || { cat /run/avahi.log; exit 1; }
  sleep 0.1
done
echo "== resolve"
timeout 15 avahi-resolve -4 -n "$4"
echo "== workstation"
timeout 15 avahi-browse -rptk _workstation._tcp
echo "== http"
timeout 15 avahi-browse -rptk _http._tcp
`

// TestServeSeenByAvahi: the real Avahi tools in the node namespace, with a
// private avahi-daemon there, see the datastore: its address, its
// workstation instance and its http service.
func TestServeSeenByAvahi(t *testing.T) {
	testnet.RequireAvahi(t)
	for _, tool := range []string{"dbus-daemon", "avahi-resolve", "avahi-browse"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian packages dbus-daemon, avahi-utils)", tool)
		}
	}
	s := newSite(t)
	mac := strings.TrimSpace(s.app.Run(t, "cat", "/sys/class/net/eth0/address"))
	s.serve(t, t.TempDir())

	dir := t.TempDir()
	conf := strings.Replace(testnet.AvahiConfig{HostName: "ldtnode", AllowInterfaces: []string{"br0"}}.Conf(),
		"enable-dbus=no", "enable-dbus=yes", 1)
	for name, data := range map[string]string{"avahi-daemon.conf": conf, "dbus.conf": dbusConf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	svc := filepath.Join(dir, "services")
	if err := os.Mkdir(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	out := s.node.Run(t, "sh", "-c", avahiScript, "sh",
		filepath.Join(dir, "avahi-daemon.conf"), filepath.Join(dir, "dbus.conf"), svc, dsHost)
	t.Logf("avahi in the node namespace:\n%s", out)

	if !strings.Contains(out, dsHost+"\t10.77.1.2") {
		t.Errorf("avahi-resolve did not find %s at 10.77.1.2", dsHost)
	}
	// avahi-browse -p escapes the instance name's space, brackets and
	// colons as decimal \DDD.
	esc := strings.NewReplacer(" ", `\032`, "[", `\091`, "]", `\093`, ":", `\058`)
	ws := "=;br0;IPv4;" + esc.Replace(dsName+" ["+mac+"]") + ";_workstation._tcp;local;" + dsHost + ";10.77.1.2;9;"
	if !strings.Contains(out, ws) {
		t.Errorf("avahi-browse lacks the workstation line %q", ws)
	}
	http := "=;br0;IPv4;" + dsName + ";_http._tcp;local;" + dsHost + ";10.77.1.2;80;"
	if !strings.Contains(out, http) {
		t.Errorf("avahi-browse lacks the http line %q", http)
	}
}
