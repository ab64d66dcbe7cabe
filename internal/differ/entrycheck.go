package differ

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"strings"
)

// errNotStageable is why a layer is left to the normal apply: extracting
// it into an empty staging directory might not give the tree extracting
// it onto the snapshot gives.
var errNotStageable = errors.New("layer needs the normal apply")

// entryCheck is the filter of a stage (see extractor). containerd's apply
// of a layer onto an empty upperdir depends on the target only where
//   - an entry's parent directory is not in the layer: archive.Apply
//     creates it (mkparent) with the owner, mode and times of the lower
//     layers' directory of that path, if there is one. Such implicit
//     parents are recorded (implicit) and Apply gives them the lower's
//     attributes the same way (see fixImplicit); the check refuses what
//     that could not replicate: an implicit directory that is named
//     later, or gets an opaque marker (its mtime would stay the lower's);
//   - a path goes through a symlink, or is absolute or climbs out with
//     "..": it is resolved in the target;
//   - an entry replaces an earlier one or a whiteout names an entry of
//     the layer (removals depend on what is there);
//   - an opaque marker is at the root (it sets an xattr on the target
//     directory itself, which a moved tree cannot carry);
//   - a hard link names something not extracted before;
//   - a PAX global header or an entry type it does not extract.
//
// Such layers are refused (the filter's error ends the extraction) and
// applied the normal way. Every other entry is extracted exactly as
// archive.Apply extracts it onto the snapshot; the stage's extractor
// relies on that: with every parent a directory of the layer and no
// entry replacing another, it need not resolve paths nor look at what is
// there.
type entryCheck struct {
	seen      map[string]byte // cleaned name -> tar type flag of what is there
	whiteouts bool
	// implicit are the parent directories archive.Apply made, in the
	// order it made them (a parent before its children).
	implicit []string
}

func newEntryCheck() *entryCheck {
	return &entryCheck{seen: map[string]byte{}}
}

// maxNameLen bounds the names staged: containerd's apply works on paths
// from / (the snapshot's directory and the name), which fail past
// PATH_MAX (4096 bytes), the stage's extractor relative to open
// directories, where they would not; longer names are left to the
// normal apply, whatever the snapshot's directory.
const maxNameLen = 3072

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// typeWhiteout marks a path where a whiteout device was made.
	typeWhiteout byte = 0xff
	// typeImplicitDir marks a parent directory archive.Apply made.
	typeImplicitDir byte = 0xfe
)

// filter sees each header, its name already cleaned by archive.Apply.
func (c *entryCheck) filter(hdr *tar.Header) (bool, error) {
	name := hdr.Name
	if name == "." {
		return true, nil // archive.Apply ignores the root entry
	}
	if err := c.parentsInLayer(name); err != nil {
		return false, err
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if base == whiteoutOpaque {
		if dir == "" {
			return false, fmt.Errorf("%w: opaque marker at the layer root", errNotStageable)
		}
		if c.seen[dir] == typeImplicitDir {
			return false, fmt.Errorf("%w: opaque marker in %q, a directory not in the layer", errNotStageable, dir)
		}
		c.whiteouts = true
		return true, nil
	}
	if orig, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		target := path.Join(dir, orig)
		if orig == "" || orig == "." || orig == ".." || strings.Contains(orig, "/") {
			return false, fmt.Errorf("%w: whiteout %q", errNotStageable, name)
		}
		if _, ok := c.seen[target]; ok {
			return false, fmt.Errorf("%w: whiteout %q of an entry of the layer", errNotStageable, name)
		}
		c.whiteouts = true
		c.seen[target] = typeWhiteout
		return true, nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeRegA, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo: //nolint:staticcheck // TypeRegA as archive.Apply
	case tar.TypeLink:
		// archive.Apply resolves the link's directory in the target
		// (following symlinks, then ".."): the cleaned name is that
		// directory only without "..".
		if hasDotDot(hdr.Linkname) {
			return false, fmt.Errorf("%w: hard link %q to %q", errNotStageable, name, hdr.Linkname)
		}
		link := path.Clean(hdr.Linkname)
		if t, ok := c.seen[link]; !ok || (t != tar.TypeReg && t != tar.TypeRegA && t != tar.TypeLink) { //nolint:staticcheck // TypeRegA as archive.Apply
			return false, fmt.Errorf("%w: hard link %q to %q, not a file extracted before", errNotStageable, name, hdr.Linkname)
		}
	default:
		return false, fmt.Errorf("%w: entry %q of type %q", errNotStageable, name, hdr.Typeflag)
	}
	if prev, ok := c.seen[name]; ok && (prev != tar.TypeDir || hdr.Typeflag != tar.TypeDir) {
		if prev == typeImplicitDir {
			return false, fmt.Errorf("%w: directory %q named after entries in it", errNotStageable, name)
		}
		return false, fmt.Errorf("%w: %q appears twice", errNotStageable, name)
	}
	c.seen[name] = hdr.Typeflag
	return true, nil
}

// parentsInLayer: every ancestor of name is a directory extracted or
// made before, or nothing yet (archive.Apply makes it: recorded in
// implicit), so archive.Apply never follows a symlink on the way; names
// are relative and stay inside.
func (c *entryCheck) parentsInLayer(name string) error {
	if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("%w: entry %q outside the layer root", errNotStageable, name)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: entry name of %d bytes", errNotStageable, len(name))
	}
	var missing []string
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		t, ok := c.seen[dir]
		if !ok {
			missing = append(missing, dir)
			continue
		}
		if t != tar.TypeDir && t != typeImplicitDir {
			return fmt.Errorf("%w: parent %q of %q is not a directory of the layer", errNotStageable, dir, name)
		}
	}
	// mkparent makes the topmost first.
	for i := len(missing) - 1; i >= 0; i-- {
		c.seen[missing[i]] = typeImplicitDir
		c.implicit = append(c.implicit, missing[i])
	}
	return nil
}

// hasDotDot: name has a ".." component.
func hasDotDot(name string) bool {
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return true
		}
	}
	return false
}
