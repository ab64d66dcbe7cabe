//go:build linux

package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before SIGKILL, and how long
// any kill waits for the process to be reaped.
const stopGrace = 5 * time.Second

var procSeq atomic.Int64

// Process is a background process started by this package (usually inside a
// namespace). It runs in its own process group, writes stdout and stderr to a
// log file in the test's temp dir, and is killed with its whole group when
// the test ends, so no daemon outlives its test.
type Process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error // valid after done is closed
}

// Start runs args in the background inside ns; see Process.
func (ns *Namespace) Start(t testing.TB, args ...string) *Process {
	t.Helper()
	if len(args) == 0 {
		t.Fatal("testnet: Start needs a command")
	}
	p := StartCmd(t, ns.Command(context.Background(), args...))
	ns.mu.Lock()
	ns.procs = append(ns.procs, p)
	ns.mu.Unlock()
	return p
}

// StartCmd starts an unstarted command (e.g. from Namespace.Command, with its
// own Env) as a Process: own process group, parent-death signal, output to a
// log file, killed at t.Cleanup. cmd.Stdout and cmd.Stderr must be unset.
func StartCmd(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	if cmd.Stdout != nil || cmd.Stderr != nil {
		t.Fatal("testnet: StartCmd: cmd.Stdout/Stderr must be nil; the output goes to the process log")
	}
	name := "proc"
	if len(cmd.Args) > 0 {
		// Skip "ip netns exec NS" to name the log after the real program.
		a := cmd.Args
		if len(a) > 3 && filepath.Base(a[0]) == "ip" && a[1] == "netns" && a[2] == "exec" {
			a = a[4:]
		}
		if len(a) > 0 {
			name = sanitize(filepath.Base(a[0]), 24)
		}
	}
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("%s-%d.log", name, procSeq.Add(1)))
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("testnet: create process log: %v", err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// If the test binary dies without running cleanups, the kernel kills
	// the direct child (the daemon itself, since `ip netns exec` execs it).
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		t.Fatalf("testnet: start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	p := &Process{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Errorf("testnet: cleanup: %v", err)
		}
		if t.Failed() {
			t.Logf("testnet: log of %s (pid %d):\n%s", name, p.Pid(), tail(p.Log(), 8000))
		}
	})
	return p
}

// Pid is the process id (also its process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file that receives the process's stdout and stderr.
func (p *Process) LogPath() string { return p.logPath }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its exit error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Wait waits up to timeout for the process to exit on its own and returns
// its exit error, or an error if it is still running.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("testnet: pid %d still running after %v", p.Pid(), timeout)
	}
}

// Stop asks the process group to quit (SIGTERM), waits a bounded time and
// then kills it (SIGKILL). It returns nil once the process is gone, whatever
// its exit status; use Wait for the status of a process that exits by itself.
func (p *Process) Stop() error {
	if done, _ := p.Exited(); done {
		p.signalGroup(syscall.SIGKILL) // leftovers of the group, if any
		return nil
	}
	if err := p.signalGroup(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		p.signalGroup(syscall.SIGKILL)
		return nil
	case <-time.After(stopGrace):
	}
	return p.Kill()
}

// Kill kills the process group now (SIGKILL) and waits (bounded) for the
// process to be reaped.
func (p *Process) Kill() error {
	_ = p.signalGroup(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
		return fmt.Errorf("testnet: pid %d not gone %v after SIGKILL", p.Pid(), stopGrace)
	}
}

func (p *Process) signalGroup(sig syscall.Signal) error {
	err := syscall.Kill(-p.Pid(), sig)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testnet: signal %v to process group %d: %w", sig, p.Pid(), err)
	}
	return nil
}

// Log returns what the process printed so far (stdout and stderr).
func (p *Process) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("<cannot read log %s: %v>", p.logPath, err)
	}
	return string(b)
}

// WaitLog polls (bounded by timeout) until the log contains substr; it fails
// the test with the log if the time runs out or the process exits first.
func (p *Process) WaitLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	if err := p.waitLog(substr, timeout); err != nil {
		t.Fatalf("%v; log:\n%s", err, tail(p.Log(), 16000))
	}
}

func (p *Process) waitLog(substr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(p.Log(), substr) {
			return nil
		}
		if done, err := p.Exited(); done {
			// The log is complete now: look once more.
			if strings.Contains(p.Log(), substr) {
				return nil
			}
			return fmt.Errorf("testnet: pid %d exited (%v) before printing %q", p.Pid(), err, substr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testnet: pid %d did not print %q within %v", p.Pid(), substr, timeout)
		}
		time.Sleep(pollInterval)
	}
}

// tail keeps the last max bytes of s, for readable failure messages.
func tail(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return "...\n" + s[len(s)-max:]
}
