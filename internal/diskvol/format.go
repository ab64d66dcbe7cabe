// Package diskvol keeps VM disk-image volumes: a verified qcow2 or raw
// image at <root>/{vault,novault}/volumes/<volumeUUID>#<generation>.<format>,
// beside the container volumes' <key>.container directories and under the
// same key rules. An image is written to a hidden partial file in that
// directory, hashed on the way, fsynced, and renamed into place only after
// its sha256 matched; a volume of the same key is never overwritten.
package diskvol

import "bytes"

// Format is a disk image's format, and the suffix of its file.
type Format string

// The formats a disk volume can have. Anything that is not qcow2 is kept
// as raw: a raw image has no header to check.
const (
	QCOW2 Format = "qcow2"
	Raw   Format = "raw"
)

// qcow2Magic starts every qcow2 image (version 1 to 3).
var qcow2Magic = []byte("QFI\xfb")

// headLen is how many bytes Detect needs.
const headLen = 4

// Detect tells the format of an image from its first bytes.
func Detect(head []byte) Format {
	if bytes.HasPrefix(head, qcow2Magic) {
		return QCOW2
	}
	return Raw
}

// formats are the suffixes a disk volume's file can have.
var formats = []Format{QCOW2, Raw}
