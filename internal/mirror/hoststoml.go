package mirror

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/localds/localds/resolver"
)

// DefaultAddr is where the daemon's mirror listens unless told otherwise.
const DefaultAddr = "127.0.0.1:5151"

// DefaultHostsHost names the hosts directory containerd uses for every
// registry without its own (config.HostDirFromRoot).
const DefaultHostsHost = "_default"

// HostsMarker starts every hosts.toml HostsTOML writes, so tools can tell
// their own files from a user's.
const HostsMarker = "# Written by `localds hosts`."

// HostsDirName is the directory under a hosts root (like
// /etc/containerd/certs.d) where containerd looks for host's hosts.toml:
// "name_port_" for "name:port" (containerd's hostDirectory, tried first
// and free of ':' for every file system), the name itself otherwise.
func HostsDirName(host string) string {
	if i := strings.LastIndex(host, ":"); i > 0 {
		return host[:i] + "_" + host[i+1:] + "_"
	}
	return host
}

// CheckHostsHost accepts what HostsTOML can write for: a .local registry
// host with an optional port, or DefaultHostsHost.
func CheckHostsHost(host string) error {
	if host == DefaultHostsHost {
		return nil
	}
	if strings.Contains(host, "://") || strings.Contains(host, "/") {
		return fmt.Errorf("host %q: give the registry host as in an image reference (name.local or name.local:port), without scheme or path", host)
	}
	if _, err := resolver.CanonicalHost(host); err != nil {
		return fmt.Errorf("host %q: %w (the mirror only serves .local registries; %s sends every registry to it first)", host, err, DefaultHostsHost)
	}
	if h, port, err := net.SplitHostPort(host); err == nil {
		if p, perr := strconv.ParseUint(port, 10, 16); perr != nil || p == 0 || h == "" {
			return fmt.Errorf("host %q: port must be 1-65535", host)
		}
	} else if strings.Contains(host, ":") {
		return fmt.Errorf("host %q: want name.local or name.local:port", host)
	}
	return nil
}

// MirrorURL turns a listen address ("127.0.0.1:5151") or URL into the
// mirror's base URL as hosts.toml names it.
func MirrorURL(addr string) (string, error) {
	raw := addr
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("mirror address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("mirror address %q: scheme must be http or https", addr)
	}
	if u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("mirror address %q: want host:port, like %s", addr, DefaultAddr)
	}
	return u.Scheme + "://" + u.Host, nil
}

// HostsTOML returns a hosts.toml that makes containerd pull host through
// the mirror at mirrorAddr (resolve, pull and the referrers API, which
// containerd asks only of hosts with that capability; the mirror never
// accepts pushes). containerd adds ns=<host> to every request to a mirror,
// which is how the mirror learns the datastore. serverScheme ("http" or
// "https") is for the server line, which containerd only tries when the
// mirror cannot answer (it needs .local name resolution on the node); the
// mirror picks its own scheme. For DefaultHostsHost there is no server
// line: each registry stays its own server, after the mirror's 404.
func HostsTOML(host, mirrorAddr, serverScheme string) (string, error) {
	return HostsTOMLWithKey(host, mirrorAddr, serverScheme, "")
}

// HostsTOMLWithKey is HostsTOML whose mirror host also sends the
// mirror's client key (KeyHeader) with every request, which is how the
// mirror tells containerd from any other local client (clientkey.go).
// key is the daemon's (LoadOrCreateKey) or, for examples, KeyPlaceholder;
// empty writes no header.
func HostsTOMLWithKey(host, mirrorAddr, serverScheme, key string) (string, error) {
	if key != "" && key != KeyPlaceholder {
		if err := checkKey(key); err != nil {
			return "", fmt.Errorf("mirror key: %w", err)
		}
	}
	if err := CheckHostsHost(host); err != nil {
		return "", err
	}
	mirrorURL, err := MirrorURL(mirrorAddr)
	if err != nil {
		return "", err
	}
	if serverScheme != "http" && serverScheme != "https" {
		return "", fmt.Errorf("server scheme %q: want http or https", serverScheme)
	}
	var b strings.Builder
	b.WriteString(HostsMarker + "\n")
	if host == DefaultHostsHost {
		b.WriteString("# containerd asks the localds mirror first for every registry without its own\n" +
			"# hosts.toml. The mirror serves .local registries, found with mDNS on the\n" +
			"# node's internal bridges, and answers 404 for any other host, which\n" +
			"# containerd then pulls from directly.\n")
	} else {
		fmt.Fprintf(&b, "# containerd pulls %s through the localds mirror, which finds the\n"+
			"# datastore with mDNS on the node's internal bridges and verifies every blob.\n"+
			"# The server line is only tried when the mirror cannot answer.\n", host)
		fmt.Fprintf(&b, "server = %q\n", serverScheme+"://"+host)
	}
	fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\", \"referrers\"]\n", mirrorURL)
	if key != "" {
		b.WriteString("  # The mirror serves only requests with this key (<root>/vault/mirror.key):\n" +
			"  # keep this file private (0600).\n")
		fmt.Fprintf(&b, "  [host.%q.header]\n    %s = %q\n", mirrorURL, KeyHeader, key)
	}
	return b.String(), nil
}

// HostsPath is where containerd reads host's hosts.toml under root.
func HostsPath(root, host string) string {
	return filepath.Join(root, HostsDirName(host), "hosts.toml")
}

// WriteHostsFile writes text as host's hosts.toml under root, replacing
// the file atomically (containerd never reads half a file). A file that
// HostsTOML did not write is a user's: it is only replaced with force.
// A file with the mirror's client key is readable by its owner only
// (0600; containerd runs as root), in a directory only its owner lists
// (0700); one without stays 0644 like containerd's own examples.
func WriteHostsFile(root, host, text string, force bool) (string, error) {
	if err := CheckHostsHost(host); err != nil {
		return "", err
	}
	path := HostsPath(root, host)
	if old, err := os.ReadFile(path); err == nil {
		if !force && !strings.HasPrefix(string(old), HostsMarker) {
			return "", fmt.Errorf("%s exists and was not written by localds; use --force to replace it", path)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	fileMode, dirMode := os.FileMode(0o644), os.FileMode(0o755)
	if strings.Contains(text, KeyHeader) {
		fileMode, dirMode = 0o600, 0o700
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return "", fmt.Errorf("create hosts directory: %w", err)
	}
	if dirMode == 0o700 {
		// MkdirAll leaves an existing directory's mode alone.
		if err := os.Chmod(dir, dirMode); err != nil {
			return "", fmt.Errorf("hosts directory: %w", err)
		}
	}
	tmp, err := os.CreateTemp(dir, ".hosts.toml-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = tmp.WriteString(text)
	if err == nil {
		err = tmp.Chmod(fileMode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}
