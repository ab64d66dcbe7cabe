package pull

import (
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/resolver"
)

// Observer is told how a pull goes, for a progress display: bytes per
// phase, and an Event for each step that finished. Progress is called
// often and from several goroutines; implementations must be safe for
// that and cheap.
type Observer interface {
	// Progress records that phase has done of total bytes (total < 0:
	// unknown). A new phase ends the previous one.
	Progress(phase dsclient.Phase, done, total int64)
	// PhaseDone ends the current phase: it succeeded.
	PhaseDone()
	// PhaseFailed ends the current phase without a summary: the error
	// returned says what happened.
	PhaseFailed()
	// Event reports a step: one of the event types of this package.
	Event(ev Event)
}

// Event is one of Unverified, VaultWarning, Resolved, Downloaded, Imported,
// SweptDownload, SweptImports, Pulled, Unpacked, VolumeCreated.
type Event interface{ event() }

// Unverified: an archive is pulled without a sha256 to check it against.
type Unverified struct{ Source string }

// VaultWarning: the vault is not as vault-encryption=warn wants it (not
// encrypted, or its state unknown); the pull goes on.
type VaultWarning struct{ Warning string }

// Resolved: the .local host of the source answered.
type Resolved struct {
	Host   string // as the source names it, without a port
	Result resolver.Result
}

// Downloaded: the archive is in (redacted URL).
type Downloaded struct {
	URL  string
	Size int64
	// Digest is the archive's checked digest; empty for a streamed
	// import, which checks it after the download (Progress PhaseVerify).
	Digest digest.Digest
}

// Imported: the archive's blobs are in the content store Into.
type Imported struct {
	Blobs, New int
	NewBytes   int64
	Into       string // the CAS directory, or "containerd's content store"
}

// SweptDownload: an unfinished download nobody touched since Touched was
// removed, with its import's writes.
type SweptDownload struct {
	What    string // redacted URL, or the download's key
	Bytes   int64
	Touched time.Time
}

// SweptImports: Count writes of killed imports untouched since Before
// were removed.
type SweptImports struct {
	Count  int
	Bytes  int64
	Before time.Time
}

// Pulled: the image record exists.
type Pulled struct {
	Image    images.Image
	Platform string // normalized
	Size     int64  // of the platform's content
	Source   string // for messages, no secrets
	Took     time.Duration
}

// Unpacked: the image's layers are in the snapshotter.
type Unpacked struct {
	Image, Snapshotter string
	Took               time.Duration
}

// VolumeCreated: the volume Key exists on the snapshotter.
type VolumeCreated struct {
	Key, Image string
	Novault    bool
	Layers     int
	Took       time.Duration
}

func (Unverified) event()    {}
func (VaultWarning) event()  {}
func (Resolved) event()      {}
func (Downloaded) event()    {}
func (Imported) event()      {}
func (SweptDownload) event() {}
func (SweptImports) event()  {}
func (Pulled) event()        {}
func (Unpacked) event()      {}
func (VolumeCreated) event() {}

// discard is the Observer of a Puller without one.
type discard struct{}

func (discard) Progress(dsclient.Phase, int64, int64) {}
func (discard) PhaseDone()                            {}
func (discard) PhaseFailed()                          {}
func (discard) Event(Event)                           {}
