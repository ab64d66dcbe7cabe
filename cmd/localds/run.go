package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v3"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/snapshot"
)

// runcRuntime is containerd's runc shim, its default runtime.
const runcRuntime = "io.containerd.runc.v2"

// ioDrainWait bounds the wait for a task's output to be copied out after
// it exited: a process the container left behind may hold it open.
const ioDrainWait = 5 * time.Second

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run a container whose root filesystem is a volume (ctr run cannot use an existing snapshot); the volume stays when the container goes",
		ArgsUsage: "ID [COMMAND [ARG...]]\n\n" +
			"   The image config (entrypoint, command, env, user, working directory) comes from the image\n" +
			"   the volume was created from, or --image; COMMAND replaces entrypoint and command, as in ctr run.\n" +
			"   The container shares the caller's network namespace (no CNI), like ctr run --net-host.\n" +
			"   localds exits with the container's exit status.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "volume", Required: true, Usage: "the volume (<volumeUUID>#<generation>) that is the container's root filesystem"},
			&cli.StringFlag{Name: "image", Usage: "image whose config to run with (default: the image the volume was created from)"},
			&cli.BoolFlag{Name: "rm", Usage: "delete the container (never its volume) when it exits"},
			&cli.StringSliceFlag{Name: "env", Usage: "set an environment variable K=V (repeatable)"},
			&cli.StringSliceFlag{Name: "mount", Usage: "add a mount, as ctr: type=bind,src=/host/dir,dst=/dir,options=rbind:ro (repeatable)"},
			&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "give the container a terminal"},
			&cli.StringFlag{Name: "fifo-dir", Usage: "directory for the stdio FIFOs (default: containerd's, under /run/containerd/fifo)"},
			&cli.StringFlag{Name: "runc-root", Usage: "runc's state directory (default: runc's)"},
		},
		// As ctr run: flags end at the container ID, so the command's own
		// flags (sh -c) and arguments reach it untouched; --env and
		// --mount values keep their commas.
		StopOnNthArg:              &runFlagsEnd,
		DisableSliceFlagSeparator: true,
		Action:                    runAction,
	}
}

// runFlagsEnd: flag parsing stops after the first argument, the ID.
var runFlagsEnd = 1

func runAction(ctx context.Context, cmd *cli.Command) error {
	if cmd.NArg() < 1 {
		return fmt.Errorf("run takes a container ID (and optionally a command): %w", errdefs.ErrInvalidArgument)
	}
	id, args := cmd.Args().First(), cmd.Args().Tail()
	v, err := snapshot.ParseVolume(cmd.String("volume"))
	if err != nil {
		return fmt.Errorf("--volume: %w", err)
	}
	key := v.String()
	mounts, err := parseMounts(cmd.StringSlice("mount"))
	if err != nil {
		return err
	}
	env := cmd.StringSlice("env")
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("--env %q: want K=V: %w", e, errdefs.ErrInvalidArgument)
		}
	}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	snName := cmd.String("snapshotter")
	img, err := volumeImage(ctx, c, snName, key, cmd.String("image"))
	if err != nil {
		return err
	}

	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		// No CNI: the container is in the caller's network namespace.
		oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf,
	}
	if len(args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(args...))
	}
	if len(env) > 0 {
		specOpts = append(specOpts, oci.WithEnv(env))
	}
	if len(mounts) > 0 {
		specOpts = append(specOpts, oci.WithMounts(mounts))
	}
	tty := cmd.Bool("tty")
	if tty {
		specOpts = append(specOpts, oci.WithTTY)
	}
	var runtimeOpts any
	if root := cmd.String("runc-root"); root != "" {
		runtimeOpts = &options.Options{Root: root}
	}
	ctr, err := c.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(snName),
		containerd.WithSnapshot(key), // the volume itself, not a new snapshot of the image
		containerd.WithRuntime(runcRuntime, runtimeOpts),
		containerd.WithNewSpec(specOpts...),
	)
	if err != nil {
		return fmt.Errorf("create container %s on volume %s: %w", id, key, err)
	}
	// From here on, main's context is cancelled by the signals we forward
	// to the container; clean-up must still reach containerd.
	keep := context.WithoutCancel(ctx)
	if cmd.Bool("rm") {
		defer func() {
			// No containerd.WithSnapshotCleanup: the volume outlives the
			// container (and the snapshotter would refuse anyway).
			if err := ctr.Delete(keep); err != nil {
				fmt.Fprintf(cmd.Root().ErrWriter, "localds: delete container %s: %v\n", id, err)
			}
		}()
	}
	code, err := runTask(ctx, keep, ctr, tty, cmd.String("fifo-dir"))
	if err != nil {
		return err
	}
	if code != 0 {
		return cli.Exit("", int(code))
	}
	return nil
}

// volumeImage finds the image whose config the container runs with: ref,
// else the one the volume records (volume create labels it). An image on
// other layers than the volume's is allowed (the volume's own layers are
// its root) but said.
func volumeImage(ctx context.Context, c *containerd.Client, snName, key, ref string) (containerd.Image, error) {
	info, err := c.SnapshotService(snName).Stat(ctx, key)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("no volume %s on snapshotter %s (localds volume ls; localds volume create): %w", key, snName, err)
		}
		return nil, fmt.Errorf("volume %s: %w", key, err)
	}
	if ref == "" {
		ref = info.Labels[snapshot.LabelImage]
		if ref == "" {
			ref = info.Labels[snapshot.LabelImageInherited]
		}
		if ref == "" {
			return nil, fmt.Errorf("volume %s records no image; name the one to run with --image: %w", key, errdefs.ErrInvalidArgument)
		}
	}
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("image %s of volume %s (pull it, or pass --image): %w", ref, key, err)
	}
	return img, nil
}

// runTask starts ctr's task with the caller's stdio, forwards signals to
// it, waits for it to exit, deletes the task and returns its exit status.
// ctx is cancelled by a signal; keep is not.
func runTask(ctx, keep context.Context, ctr containerd.Container, tty bool, fifoDir string) (uint32, error) {
	stdin := &stdinCloser{r: os.Stdin}
	ioOpts := []cio.Opt{cio.WithStreams(stdin, os.Stdout, os.Stderr)}
	if tty {
		ioOpts = append(ioOpts, cio.WithTerminal)
	}
	if fifoDir != "" {
		ioOpts = append(ioOpts, cio.WithFIFODir(fifoDir))
	}
	task, err := ctr.NewTask(ctx, cio.NewCreator(ioOpts...))
	if err != nil {
		return 0, fmt.Errorf("create task of %s: %w", ctr.ID(), err)
	}
	defer func() {
		// The output first (bounded), then the task: Delete cancels the
		// copy of whatever output is left.
		drained := make(chan struct{})
		go func() { task.IO().Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(ioDrainWait):
		}
		if _, err := task.Delete(keep); err != nil && !errdefs.IsNotFound(err) {
			fmt.Fprintf(os.Stderr, "localds: delete task of %s: %v\n", ctr.ID(), err)
		}
	}()
	stdin.setCloser(func() { task.CloseIO(keep, containerd.WithStdinCloser) })
	exitCh, err := task.Wait(keep)
	if err != nil {
		return 0, fmt.Errorf("wait for %s: %w", ctr.ID(), err)
	}
	if tty {
		restore, err := rawTerminal(int(os.Stdin.Fd()))
		if err != nil {
			return 0, err
		}
		defer restore()
	}
	if err := task.Start(ctx); err != nil {
		return 0, fmt.Errorf("start %s: %w", ctr.ID(), err)
	}
	stop := forwardSignals(keep, task, tty)
	defer stop()
	st := <-exitCh
	code, _, err := st.Result()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", ctr.ID(), err)
	}
	return code, nil
}

// forwardSignals passes the signals localds gets on to the task (SIGWINCH
// as a resize of its terminal) until stop is called.
func forwardSignals(ctx context.Context, task containerd.Task, tty bool) (stop func()) {
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	done := make(chan struct{})
	resize := func() {
		if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil {
			task.Resize(ctx, uint32(ws.Col), uint32(ws.Row))
		}
	}
	if tty {
		resize()
	}
	go func() {
		for {
			select {
			case s := <-sigc:
				if s == syscall.SIGWINCH {
					if tty {
						resize()
					}
					continue
				}
				if err := task.Kill(ctx, s.(syscall.Signal)); err != nil && !errdefs.IsNotFound(err) {
					fmt.Fprintf(os.Stderr, "localds: forward %s: %v\n", s, err)
				}
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(sigc); close(done) }
}

// stdinCloser closes the task's stdin when ours ends, so a container
// reading stdin sees its end (as ctr does). Our stdin may end before the
// task exists (cio starts copying at once); the close then waits for it.
type stdinCloser struct {
	r       io.Reader
	mu      sync.Mutex
	eof     bool
	closeIO func()
	once    sync.Once
}

func (s *stdinCloser) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.mu.Lock()
		s.eof = true
		f := s.closeIO
		s.mu.Unlock()
		if f != nil {
			s.once.Do(f)
		}
	}
	return n, err
}

// setCloser sets what closes the task's stdin, at once if ours has ended.
func (s *stdinCloser) setCloser(f func()) {
	s.mu.Lock()
	s.closeIO = f
	eof := s.eof
	s.mu.Unlock()
	if eof {
		s.once.Do(f)
	}
}

// rawTerminal puts the terminal fd into raw mode (cfmakeraw) so keys go
// to the container's terminal as typed; restore undoes it.
func rawTerminal(fd int) (restore func(), err error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("--tty needs a terminal on stdin: %w", err)
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("terminal raw mode: %w", err)
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

// parseMounts reads --mount values the way ctr does:
// type=bind,src=/host,dst=/ctr,options=rbind:ro. A bind mount without
// options is "rbind".
func parseMounts(vals []string) ([]specs.Mount, error) {
	var out []specs.Mount
	for _, val := range vals {
		m := specs.Mount{Type: "bind"}
		for _, field := range strings.Split(val, ",") {
			k, v, ok := strings.Cut(field, "=")
			if !ok {
				return nil, fmt.Errorf("--mount %q: field %q is not key=value: %w", val, field, errdefs.ErrInvalidArgument)
			}
			switch k {
			case "type":
				m.Type = v
			case "source", "src":
				m.Source = v
			case "destination", "dst", "target":
				m.Destination = v
			case "options":
				m.Options = strings.Split(v, ":")
			default:
				return nil, fmt.Errorf("--mount %q: unknown key %q (type, src, dst, options): %w", val, k, errdefs.ErrInvalidArgument)
			}
		}
		if !strings.HasPrefix(m.Destination, "/") {
			return nil, fmt.Errorf("--mount %q: dst must be an absolute path in the container: %w", val, errdefs.ErrInvalidArgument)
		}
		if m.Type == "bind" {
			if m.Source == "" {
				return nil, fmt.Errorf("--mount %q: a bind mount needs src: %w", val, errdefs.ErrInvalidArgument)
			}
			if len(m.Options) == 0 {
				m.Options = []string{"rbind"}
			}
		}
		out = append(out, m)
	}
	return out, nil
}
