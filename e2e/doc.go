// Package e2e holds the end-to-end proof of localds as a containerd user
// meets it: the real `ctr image pull --hosts-dir` against a `.local`
// datastore (Debian's docker-registry announced by the real avahi-daemon),
// through containerd-localds-grpc loaded as containerd's content store, all
// inside network namespaces the tests create (internal/testnet). It also
// holds BenchmarkPull, which compares that pull with stock containerd
// pulling the same image straight from the registry by IP.
//
// The package has no code of its own; everything is in its tests.
package e2e
