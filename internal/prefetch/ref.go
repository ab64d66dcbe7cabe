package prefetch

import "github.com/opencontainers/go-digest"

// RefPrefix begins the ref of every content-store ingest a prefetch
// writes; the daemon removes such ingests at start (a dead daemon's).
const RefPrefix = "localds-prefetch-"

// IngestRef is the content-store ingest of the prefetch of dgst from
// source (the datastore host): one per (source, digest), so that two
// hosts' prefetches of a blob never share or lock each other out of an
// ingest.
func IngestRef(source string, dgst digest.Digest) string {
	return RefPrefix + source + "-" + dgst.String()
}
