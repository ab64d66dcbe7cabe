package differ

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// maxDirDepth bounds the directories a stage holds open at once (one per
// level of the current path); deeper layers are left to the normal apply.
const maxDirDepth = 256

const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// dirStack holds the directories of the current path open, the root
// first: tars list a directory's entries together, so most entries need
// no lookup at all and the rest one openat per level changed, never a
// walk from the root. Opening with O_NOFOLLOW|O_DIRECTORY, it never
// follows a symlink.
type dirStack struct {
	names []string // paths relative to the root; names[0] is ""
	fds   []int
	// implicit is told of each parent directory made (mkparent's).
	implicit func(name string)
}

func newDirStack(root int, implicit func(string)) *dirStack {
	return &dirStack{names: []string{""}, fds: []int{root}, implicit: implicit}
}

func (d *dirStack) root() int { return d.fds[0] }

// within: p is dir or below it.
func within(dir, p string) bool {
	return dir == "" || p == dir || strings.HasPrefix(p, dir+"/")
}

// open returns the descriptor of directory p ("" for the root), opening
// what is missing of it; with create, a missing directory is made as
// archive.Apply's mkparent makes it (mode 0755, chmod'ed past the umask,
// nothing else).
func (d *dirStack) open(p string, create bool) (int, error) {
	for len(d.fds) > 1 && !within(d.names[len(d.names)-1], p) {
		d.pop()
	}
	top := d.names[len(d.names)-1]
	rest := strings.TrimPrefix(p[len(top):], "/")
	for rest != "" {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		name := c
		if cur := d.names[len(d.names)-1]; cur != "" {
			name = cur + "/" + c
		}
		_, err := d.push(name, c)
		if err != nil && create && errors.Is(err, unix.ENOENT) {
			pfd := d.fds[len(d.fds)-1]
			if err := unix.Mkdirat(pfd, c, 0o755); err != nil {
				return -1, fmt.Errorf("mkparent %q: %w", name, err)
			}
			if err := unix.Fchmodat(pfd, c, 0o755, 0); err != nil {
				return -1, fmt.Errorf("mkparent %q: %w", name, err)
			}
			d.implicit(name)
			_, err = d.push(name, c)
		}
		if err != nil {
			return -1, err
		}
	}
	return d.fds[len(d.fds)-1], nil
}

// push opens base in the directory on top and puts it on top as name.
func (d *dirStack) push(name, base string) (int, error) {
	if len(d.fds) > maxDirDepth {
		return -1, fmt.Errorf("%w: %q is more than %d directories deep", errNotStageable, name, maxDirDepth)
	}
	fd, err := unix.Openat(d.fds[len(d.fds)-1], base, dirFlags, 0)
	if err != nil {
		return -1, fmt.Errorf("open directory %q: %w", name, err)
	}
	d.names, d.fds = append(d.names, name), append(d.fds, fd)
	return fd, nil
}

func (d *dirStack) pop() {
	unix.Close(d.fds[len(d.fds)-1])
	d.names, d.fds = d.names[:len(d.names)-1], d.fds[:len(d.fds)-1]
}

// close closes every descriptor, the root's too.
func (d *dirStack) close() {
	for len(d.fds) > 1 {
		d.pop()
	}
	unix.Close(d.fds[0])
}

// openBeneath opens directory p below root level by level, never
// following a symlink; root itself for "". The caller closes what is not
// root.
func openBeneath(root int, p string) (int, error) {
	fd := root
	for rest := p; rest != ""; {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		next, err := unix.Openat(fd, c, dirFlags, 0)
		if fd != root {
			unix.Close(fd)
		}
		if err != nil {
			return -1, fmt.Errorf("open directory %q: %w", p, err)
		}
		fd = next
	}
	return fd, nil
}
