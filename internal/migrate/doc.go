// Package migrate adopts what a node already has into the localds root
// without downloading it again: containerd's own content store into
// <root>/vault/cas (content.go), and EVE's legacy volume layout
// (/persist/img, /persist/runx/pods/prepared) into
// <root>/{vault,novault}/volumes/<uuid>#<gen>.<format> from a mapping
// file (legacy.go). Both run dry by default and report every item: what
// moved, what would, what was left and why. Nothing is ever overwritten.
package migrate

// Action says what happened to one item.
type Action string

// Actions of a report.
const (
	Linked   Action = "linked"   // hard link into the CAS (same file system)
	Cloned   Action = "cloned"   // reflink copy, blocks shared
	Copied   Action = "copied"   // copied and fsynced
	Moved    Action = "moved"    // renamed within a file system
	Present  Action = "present"  // already there, verified
	WouldDo  Action = "would"    // dry run: Detail says what
	Left     Action = "left"     // not migrated; Detail says why
	Finished Action = "finished" // an interrupted run's move, completed now
)
