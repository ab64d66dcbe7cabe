//go:build linux

package snapshot

import (
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// A volume holds an app's data across its containers, so the snapshotter
// removes one only when `localds volume rm` has asked for it: that command
// first sets LabelRemoveInherited (through containerd's Update, which
// passes containerd.io/snapshot/ labels on to the backend) to the time of
// the request, then removes the snapshot. Every other Remove of a volume
// (containerd's garbage collection after `ctr containers rm` or `ctr
// snapshots rm`, a direct client of the daemon) fails with
// errdefs.ErrFailedPrecondition, which containerd's GC logs and skips.
//
// This guards against accidents, not against a local user: anyone who can
// talk to containerd can set the label too (`ctr snapshots label`).
const (
	// LabelRemove marks a volume that `localds volume rm` is removing; its
	// value is the RFC 3339 time of the request.
	LabelRemove = "localds.volume/remove"
	// LabelRemoveInherited is LabelRemove as containerd passes it on.
	LabelRemoveInherited = "containerd.io/snapshot/" + LabelRemove
)

// RemoveGrace is how long a removal request stays valid. A request whose
// removal did not finish (the command killed between its Update and
// containerd's garbage collection) must not make the volume removable by
// the next accidental `ctr containers rm` days later; containerd's GC
// normally follows the request within seconds.
const RemoveGrace = 10 * time.Minute

// clockSkew tolerates a request stamped slightly in the future (the CLI
// and the daemon read the same clock, but it may be stepped).
const clockSkew = time.Minute

// RemoveRequest is the value of LabelRemoveInherited that asks for the
// removal of a volume at now.
func RemoveRequest(now time.Time) string {
	return now.UTC().Format(time.RFC3339)
}

// checkRemovable refuses to remove a volume that carries no valid removal
// request. Snapshots that are not volumes are always removable here (the
// metastore still refuses a parent with children).
func checkRemovable(info snapshots.Info, now time.Time) error {
	v, isVol, err := ParseVolumeKey(info.Name)
	if err != nil || !isVol || info.Kind != snapshots.KindActive {
		// Prepare refused malformed volume keys, so err cannot happen
		// for a stored snapshot; an odd key is not a volume's.
		return nil
	}
	refuse := func(why string) error {
		return fmt.Errorf("volume %s is kept (%s): volumes outlive containers and are removed only with `localds volume rm %s`: %w", v, why, v, errdefs.ErrFailedPrecondition)
	}
	val := info.Labels[LabelRemoveInherited]
	if val == "" {
		val = info.Labels[LabelRemove]
	}
	if val == "" {
		return refuse("no removal request")
	}
	at, err := time.Parse(time.RFC3339, val)
	if err != nil {
		return refuse(fmt.Sprintf("removal request %q is not an RFC 3339 time", clip(val)))
	}
	if age := now.Sub(at); age > RemoveGrace || age < -clockSkew {
		return refuse(fmt.Sprintf("removal request of %s has expired", val))
	}
	return nil
}
