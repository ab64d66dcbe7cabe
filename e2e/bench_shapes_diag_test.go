//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Optional diagnostics of BenchmarkPullShapes, each side and round on
// its own (tag: shape-round-side):
//
//   - LOCALDS_BENCH_LOG=dir: the daemon and containerd log at debug level (which costs
//     time of its own) and both daemons' logs are saved in dir;
//   - LOCALDS_BENCH_PERF=dir: `perf record -g` of containerd (and the
//     daemon) during the timed pull, into dir/<tag>.perf
//     (`perf report --no-children -i FILE`); with LOCALDS_BENCH_PERF_ALL=1
//     of the whole machine instead; with LOCALDS_BENCH_PERF_TRACE=calls
//     (e.g. fdatasync,fsync) `perf trace -s` instead, each thread's count
//     and latency of those system calls, into dir/<tag>.perf.trace; with
//     LOCALDS_BENCH_PERF_EVENT=event (e.g. syscalls:sys_enter_fdatasync)
//     the call stack of every such event instead (`perf script -i FILE`
//     names the code behind each of containerd's bolt commits);
//   - LOCALDS_BENCH_DAEMON_FLAGS="--flag=value ...": extra daemon flags,
//     to compare settings (e.g. --stage-layers=false).

// benchDaemonFlags are the daemon's extra flags: LOCALDS_BENCH_DAEMON_FLAGS,
// and debug logs under LOCALDS_BENCH_LOG.
func benchDaemonFlags() []string {
	flags := strings.Fields(os.Getenv("LOCALDS_BENCH_DAEMON_FLAGS"))
	if os.Getenv("LOCALDS_BENCH_LOG") != "" {
		flags = append(flags, "--log-level", "debug")
	}
	return flags
}

// benchContainerdLogLevel is containerd's log level: debug under
// LOCALDS_BENCH_LOG (its unpack logs each layer's times), else the
// default.
func benchContainerdLogLevel() string {
	if os.Getenv("LOCALDS_BENCH_LOG") != "" {
		return "debug"
	}
	return ""
}

// saveBenchLogs writes the logs under LOCALDS_BENCH_LOG, named by tag.
func saveBenchLogs(b testing.TB, tag string, logs map[string]string) {
	b.Helper()
	dir := os.Getenv("LOCALDS_BENCH_LOG")
	if dir == "" {
		return
	}
	for name, log := range logs {
		p := filepath.Join(dir, tag+"-"+name+".log")
		if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
			b.Errorf("save %s: %v", p, err)
		}
	}
}

// perfTimeout bounds how long perf may take to write its profile once
// told to stop.
const perfTimeout = 60 * time.Second

// startPerf starts `perf record -g` of pids under LOCALDS_BENCH_PERF and
// returns what stops it (a no-op without the variable).
func startPerf(b testing.TB, tag string, pids ...int) func() {
	b.Helper()
	dir := os.Getenv("LOCALDS_BENCH_PERF")
	if dir == "" {
		return func() {}
	}
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	out := filepath.Join(dir, tag+".perf")
	target := []string{"-p", strings.Join(ps, ",")}
	if os.Getenv("LOCALDS_BENCH_PERF_ALL") != "" {
		target = []string{"-a"} // the whole machine: kernel threads, the registry
	}
	args := append([]string{"record", "-g", "-o", out}, target...)
	if calls := os.Getenv("LOCALDS_BENCH_PERF_TRACE"); calls != "" {
		// per-thread count and latency of the named syscalls
		args = append([]string{"trace", "-s", "-e", calls, "-o", out + ".trace"}, target...)
		out += ".trace"
	} else if event := os.Getenv("LOCALDS_BENCH_PERF_EVENT"); event != "" {
		// the call stacks of each such event, e.g. which code fdatasyncs
		args = []string{"record", "-e", event, "--call-graph", "fp", "-o", out}
		args = append(args, target...)
	}
	cmd := exec.Command("perf", args...)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatalf("perf record: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // attached before the pull starts
	return func() {
		b.Helper()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			b.Errorf("perf record: %v", err)
		}
		select {
		case <-done:
		case <-time.After(perfTimeout):
			cmd.Process.Kill()
			<-done
			b.Errorf("perf record did not stop within %v:\n%s", perfTimeout, log.String())
			return
		}
		b.Logf("perf profile of %s: %s", tag, out)
	}
}

// benchTag names one side of one round of a shape.
func benchTag(shape string, round int, side string) string {
	return fmt.Sprintf("%s-r%d-%s", shape, round, side)
}
