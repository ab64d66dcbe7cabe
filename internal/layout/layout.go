// Package layout names the localds root, the one directory tree every
// localds program works under:
//
//	<root>/vault/cas          the content store (containerd's, via the daemon)
//	<root>/vault/staging      layers extracted during the prefetch
//	<root>/vault/snapshots    the snapshotter's layers and metadata
//	<root>/vault/volumes      writable layers of volumes
//	<root>/novault/volumes    volumes created with --novault
//	<root>/vault/downloader   archives being downloaded by localds pull
//
// The daemon and the localds command take --root; this is its default.
package layout

// DefaultRoot is the node's persistent tree (EVE-OS's /persist): "vault"
// is its encrypted part, "novault" the rest.
const DefaultRoot = "/persist"
