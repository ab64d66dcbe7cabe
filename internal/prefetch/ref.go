package prefetch

// RefPrefix begins the ref of every content-store ingest a prefetch
// writes; the daemon removes such ingests at start (a dead daemon's).
const RefPrefix = "localds-prefetch-"
