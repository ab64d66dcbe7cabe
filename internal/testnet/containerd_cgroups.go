//go:build linux

package testnet

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// cgroupScript is why ContainerdOptions.RunContainers works: `ip netns
// exec` gives every process a mount namespace with a fresh /sys, which has
// no cgroup mounts, and runc refuses to start a container without them
// ("no cgroup mount found in mountinfo"). The prelude mounts the host's
// cgroup hierarchies again (a cgroup mount of the same controllers shares
// the host's superblock) and a private /run, so shims' sockets and runc's
// state never land in the host's /run. All of it stays in the mount
// namespace of that containerd and its shims.
//
// cgroupScript is a shell prelude that recreates the host's cgroup mounts
// under /sys/fs/cgroup (read from this process's mountinfo, which is the
// host's) and mounts a tmpfs on /run.
func cgroupScript() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var b strings.Builder
	b.WriteString("set -e\nmount -t tmpfs -o mode=0755,size=16m localds-e2e-run /run\n")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		mp, fstype := pf[4], qf[0]
		if mp != "/sys/fs/cgroup" && !strings.HasPrefix(mp, "/sys/fs/cgroup/") {
			continue
		}
		if strings.ContainsAny(mp, "'\\ ") {
			return "", fmt.Errorf("unexpected cgroup mount point %q", mp)
		}
		var opts []string
		for _, o := range strings.Split(qf[2], ",") {
			if o != "rw" && o != "ro" && !strings.ContainsAny(o, "'\\ ") {
				opts = append(opts, o)
			}
		}
		o := ""
		if len(opts) > 0 {
			o = "-o '" + strings.Join(opts, ",") + "' "
		}
		switch fstype {
		case "tmpfs", "cgroup", "cgroup2":
			fmt.Fprintf(&b, "mkdir -p '%s'\nmount -t %s %s%s '%s'\n", mp, fstype, o, fstype, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return b.String(), nil
}
