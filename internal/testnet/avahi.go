//go:build linux

package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// avahiStartTimeout bounds the wait for "Server startup complete" and for
// each service to be established (both take about one second: probing).
const avahiStartTimeout = 20 * time.Second

// avahiServicesDir is compiled into avahi-daemon; a private bind mount
// replaces it for each test daemon.
const avahiServicesDir = "/etc/avahi/services"

// AvahiConfig is what a test says about its Avahi daemon; StartAvahi turns it
// into an avahi-daemon.conf. D-Bus, wide-area and the reflector are always off.
type AvahiConfig struct {
	HostName           string            // host-name= (e.g. "ubuntu-4321-http-server"); required
	AllowInterfaces    []string          // allow-interfaces=; required (the design rules demand it)
	PublishAAAAOnIPv4  *bool             // publish-aaaa-on-ipv4=; nil = Avahi's default (yes)
	UseIPv6            bool              // use-ipv6= (EVE docs say no)
	PublishWorkstation *bool             // publish-workstation=; nil = yes (EVE docs)
	Services           map[string]string // file name -> service XML; ".service" is appended if missing
}

// AvahiService returns the XML of an Avahi static service of type stype
// (e.g. "_http._tcp") on port, named after the host (%h), for
// AvahiConfig.Services.
func AvahiService(stype string, port int) string {
	return fmt.Sprintf(`<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name replace-wildcards="yes">%%h</name>
  <service>
    <type>%s</type>
    <port>%d</port>
  </service>
</service-group>
`, stype, port)
}

// Conf renders the avahi-daemon.conf for c.
func (c AvahiConfig) Conf() string {
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	var b strings.Builder
	b.WriteString("# written by localds internal/testnet\n[server]\n")
	fmt.Fprintf(&b, "host-name=%s\n", c.HostName)
	b.WriteString("use-ipv4=yes\n")
	fmt.Fprintf(&b, "use-ipv6=%s\n", yn(c.UseIPv6))
	fmt.Fprintf(&b, "allow-interfaces=%s\n", strings.Join(c.AllowInterfaces, ","))
	b.WriteString("enable-dbus=no\nratelimit-interval-usec=1000000\nratelimit-burst=1000\n")
	b.WriteString("[wide-area]\nenable-wide-area=no\n")
	b.WriteString("[publish]\npublish-hinfo=no\n")
	fmt.Fprintf(&b, "publish-workstation=%s\n", yn(c.PublishWorkstation == nil || *c.PublishWorkstation))
	if c.PublishAAAAOnIPv4 != nil {
		fmt.Fprintf(&b, "publish-aaaa-on-ipv4=%s\n", yn(*c.PublishAAAAOnIPv4))
	}
	b.WriteString("[reflector]\nenable-reflector=no\n")
	return b.String()
}

// RequireAvahi skips the test when avahi-daemon is not installed, except
// under CI (CI=true), where a missing daemon is an install bug and fails.
func RequireAvahi(t testing.TB) {
	t.Helper()
	_, err1 := exec.LookPath("avahi-daemon")
	_, err2 := os.Stat(avahiServicesDir)
	if err1 == nil && err2 == nil {
		return
	}
	msg := fmt.Sprintf("testnet: needs avahi-daemon and %s (Debian package avahi-daemon, installed with service start disabled)", avahiServicesDir)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// StartAvahi runs the real avahi-daemon inside ns without D-Bus, with a
// private /run (so its pid file and socket never clash with the host's or
// another test daemon's) and a private /etc/avahi/services holding
// cfg.Services. `ip netns exec` gives it its own mount namespace with / as a
// slave, so these mounts never reach the host. It returns once the daemon
// logged "Server startup complete" and every service is established
// (bounded); otherwise it fails the test with the daemon's log.
func StartAvahi(t testing.TB, ns *Namespace, cfg AvahiConfig) *Process {
	t.Helper()
	RequireAvahi(t)
	if cfg.HostName == "" {
		t.Fatal("testnet: StartAvahi: HostName is required")
	}
	if len(cfg.AllowInterfaces) == 0 {
		t.Fatal("testnet: StartAvahi: AllowInterfaces is required (never let a test daemon pick its interfaces)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "avahi-daemon.conf")
	if err := os.WriteFile(conf, []byte(cfg.Conf()), 0o644); err != nil {
		t.Fatalf("testnet: write avahi config: %v", err)
	}
	svcDir := filepath.Join(dir, "services")
	if err := os.Mkdir(svcDir, 0o755); err != nil {
		t.Fatalf("testnet: avahi services dir: %v", err)
	}
	var files []string
	for name, xml := range cfg.Services {
		if name == "" || strings.ContainsAny(name, "/\x00") {
			t.Fatalf("testnet: bad avahi service file name %q", name)
		}
		if !strings.HasSuffix(name, ".service") {
			name += ".service" // avahi only loads *.service
		}
		if err := os.WriteFile(filepath.Join(svcDir, name), []byte(xml), 0o644); err != nil {
			t.Fatalf("testnet: write avahi service %s: %v", name, err)
		}
		files = append(files, name)
	}
	sort.Strings(files)

	// A tmpfs over /run, not over /run/avahi-daemon: the host may not have
	// that directory and we must not create it there. Paths are passed as
	// arguments, never spliced into the script.
	const script = `set -e
mount -t tmpfs -o mode=0755,size=4m localds-testnet /run
mkdir -p /run/avahi-daemon
mount --bind "$2" ` + avahiServicesDir + `
exec avahi-daemon -f "$1" --no-drop-root --no-chroot --no-rlimits --debug`
	p := ns.Start(t, "sh", "-c", script, "sh", conf, svcDir)

	start := time.Now()
	if err := p.waitLog("Server startup complete", avahiStartTimeout); err != nil {
		t.Fatalf("testnet: avahi-daemon in %s: %v; log:\n%s", ns.Name, err, tail(p.Log(), 16000))
	}
	for _, f := range files {
		want := "(" + avahiServicesDir + "/" + f + ") successfully established"
		if err := p.waitLog(want, avahiStartTimeout); err != nil {
			t.Fatalf("testnet: avahi-daemon in %s: service %s: %v; log:\n%s", ns.Name, f, err, tail(p.Log(), 16000))
		}
	}
	t.Logf("testnet: avahi-daemon %q up in %s after %v", cfg.HostName, ns.Name, time.Since(start).Round(time.Millisecond))
	return p
}
