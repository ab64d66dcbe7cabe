// Package archiveimport imports image archives (an OCI image layout tar or
// a `docker save` tar) into a containerd content store, as containerd's
// core/images/archive does, with what an edge node needs on top: every
// blob verified while it is written, nothing committed before the whole
// archive's sha256 matched (StreamImport), a checkpoint to resume an
// interrupted import at the byte it reached, the node's platform picked
// from a multi-platform index, and hostile entries (".." paths, links out
// of the archive, special files) refused.
//
// Import reads an archive that is already on disk; StreamImport is fed by
// the downloader while the archive arrives (dsclient.ChunkSink). Both
// write through containerd's content store, or straight into the localds
// CAS when containerd's store is that CAS (archive_direct.go), and both
// run under a containerd lease (Leased) so a failed import leaves nothing.
package archiveimport
