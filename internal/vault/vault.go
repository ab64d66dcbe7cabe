// Package vault answers whether <root>/vault, the tree that holds the CAS,
// the downloader's area, the snapshots and the vault volumes, is encrypted
// by the kernel (fscrypt) and whether its key is present, and enforces the
// operator's choice (Mode) before anything is written there.
package vault

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Dir is root's vault directory.
func Dir(root string) string { return filepath.Join(root, "vault") }

// Key is what the kernel says about the key of the vault's policy.
type Key string

// Values of Key.
const (
	// KeyNone: the vault has no policy, so no key.
	KeyNone Key = ""
	// KeyPresent: the key is in the file system's keyring; files can be
	// read and written.
	KeyPresent Key = "present"
	// KeyAbsent: the key was never added or was removed; nothing under
	// the vault can be created or read in clear.
	KeyAbsent Key = "absent"
	// KeyIncompletelyRemoved: removed while files were open; those stay
	// readable, new files cannot be created.
	KeyIncompletelyRemoved Key = "incompletely-removed"
	// KeyUnknown: a v1 policy, whose key lives in a process keyring the
	// kernel does not report on per file system.
	KeyUnknown Key = "unknown"
)

// Status is the vault's encryption as the kernel reports it.
type Status struct {
	Path string `json:"path"`
	// Exists is false when the directory is not there yet.
	Exists bool `json:"exists"`
	// Encrypted: the directory has an fscrypt policy.
	Encrypted bool `json:"encrypted"`
	// Policy is the policy's version (1 or 2), 0 without one.
	Policy int `json:"policy,omitempty"`
	// KeyID is the v2 policy's key identifier (hex), or the v1 policy's
	// key descriptor.
	KeyID string `json:"key_id,omitempty"`
	Key   Key    `json:"key,omitempty"`
	// Reason says why the vault is not encrypted (no policy, a file
	// system without encryption support).
	Reason string `json:"reason,omitempty"`
	// Warning is what Enforce found wrong under vault-encryption=warn,
	// for the caller to show.
	Warning string `json:"warning,omitempty"`
}

// Usable says whether files under the vault can be written: not
// encrypted, or encrypted with its key present (or not known absent).
func (s Status) Usable() bool {
	return !s.Encrypted || (s.Key != KeyAbsent && s.Key != KeyIncompletelyRemoved)
}

// String is one line for an operator.
func (s Status) String() string {
	switch {
	case !s.Exists:
		return fmt.Sprintf("%s does not exist", s.Path)
	case !s.Encrypted:
		return fmt.Sprintf("%s is not encrypted (%s)", s.Path, s.Reason)
	default:
		return fmt.Sprintf("%s is encrypted (fscrypt v%d policy, key %s: %s)", s.Path, s.Policy, s.KeyID, s.Key)
	}
}

// Inspect asks the kernel about root's vault. A missing vault is a Status
// with Exists false, not an error; an error is a question the kernel
// could not answer (the directory unreadable).
func Inspect(ctx context.Context, root string) (Status, error) {
	st, err := inspect(Dir(root))
	if err != nil {
		return st, fmt.Errorf("vault encryption of %s: %w", Dir(root), err)
	}
	log.G(ctx).WithField("vault", st.String()).Debug("vault encryption")
	return st, nil
}

// Mode is the operator's choice of what an unencrypted vault means.
type Mode string

// Values of Mode.
const (
	// Require: refuse to write into a vault that is not encrypted or
	// whose key is absent.
	Require Mode = "require"
	// Warn: log a warning and go on.
	Warn Mode = "warn"
	// Off: do not look.
	Off Mode = "off"
)

// DefaultMode is Warn: EVE encrypts /persist/vault only where the TPM
// allows it, and a node without one must still pull and run its apps, so
// refusing by default would stop those nodes; saying nothing would hide a
// node whose encryption silently failed. Nodes that must never keep an
// image in clear set Require.
const DefaultMode = Warn

// ParseMode checks s; "" is DefaultMode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return DefaultMode, nil
	case Require, Warn, Off:
		return m, nil
	}
	return "", fmt.Errorf("vault-encryption = %q: want %q, %q or %q: %w", s, Require, Warn, Off, errdefs.ErrInvalidArgument)
}

// Check enforces mode on st: under Require an unencrypted, missing or
// locked vault is an error (FailedPrecondition) naming the path and what
// to do; under Warn the same is returned as a warning for the caller to
// show once (the daemon logs it, the localds command prints it as a
// note), with a nil error; Off returns nothing without looking.
func Check(mode Mode, st Status) (warning string, err error) {
	if mode == Off || mode == "" {
		return "", nil
	}
	problem := describe(st)
	if problem == "" {
		return "", nil
	}
	if mode == Require {
		return "", fmt.Errorf("vault-encryption=require: %s: %w", problem, errdefs.ErrFailedPrecondition)
	}
	return problem + " (vault-encryption=warn; set it to require to refuse, off to silence)", nil
}

// Enforce inspects root's vault and checks it against mode (see Check);
// Off does not look at all. Under Warn, Status.Warning says what is
// wrong.
func Enforce(ctx context.Context, mode Mode, root string) (Status, error) {
	if mode == Off {
		return Status{Path: Dir(root)}, nil
	}
	st, err := Inspect(ctx, root)
	if err != nil {
		if mode == Require {
			return st, fmt.Errorf("vault-encryption=require: %w: %w", err, errdefs.ErrFailedPrecondition)
		}
		st.Warning = fmt.Sprintf("cannot tell whether the vault is encrypted: %v", err)
		return st, nil
	}
	st.Warning, err = Check(mode, st)
	return st, err
}

// describe is what is wrong with st and what to do, "" if nothing.
func describe(st Status) string {
	switch {
	case !st.Exists:
		return fmt.Sprintf("vault %s does not exist, so it has no encryption policy: create it as an empty directory on a file system with encryption (ext4 -O encrypt, f2fs) and set an fscrypt policy on it (fscrypt encrypt %s) before localds writes there", st.Path, st.Path)
	case !st.Encrypted:
		return fmt.Sprintf("vault %s is not encrypted (%s): images and vault volumes would be kept in clear; move its contents away, set an fscrypt policy on the empty directory (fscrypt encrypt %s, on ext4 -O encrypt or f2fs) and move them back", st.Path, st.Reason, st.Path)
	case st.Key == KeyAbsent || st.Key == KeyIncompletelyRemoved:
		return fmt.Sprintf("vault %s is encrypted (fscrypt v%d, key %s) but its key is %s in the kernel: nothing can be written there until it is unlocked (fscrypt unlock %s)", st.Path, st.Policy, st.KeyID, st.Key, st.Path)
	}
	return ""
}
