// Package reponame checks the names a registry API path carries, a
// repository name and a tag, by github.com/distribution/reference's
// grammar: the one containerd and registries use, so the mirror and the
// datastore server accept exactly what a registry client can send. The
// grammar also keeps "..", "." and empty components out of file paths
// built from a name.
package reponame

import (
	"fmt"

	"github.com/distribution/reference"
)

// anyDomain stands in for a registry host: reference parses a repository
// path only after a domain (without one it would read a first component
// such as "Library" as the host), and .invalid is never a real one.
const anyDomain = "reponame.invalid"

// CheckRepository accepts a repository name as it appears in a /v2/ path
// (no registry host): "/"-separated components of lower-case letters and
// digits joined by '.', '_', '__' or dashes, at most 255 characters.
func CheckRepository(name string) error {
	named, err := reference.WithName(anyDomain + "/" + name)
	if err != nil {
		return fmt.Errorf("repository name %q: %w", name, err)
	}
	if reference.Path(named) != name {
		return fmt.Errorf("repository name %q: %w", name, reference.ErrReferenceInvalidFormat)
	}
	return nil
}

// CheckTag accepts a tag: 1 to 128 letters, digits, '_', '.' and '-', not
// starting with '.' or '-'.
func CheckTag(tag string) error {
	named, err := reference.WithName(anyDomain + "/x")
	if err != nil {
		return err // cannot happen: a constant
	}
	if _, err := reference.WithTag(named, tag); err != nil {
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	return nil
}
