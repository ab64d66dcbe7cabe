// Package writeback asks the kernel to start writing a file's dirty pages
// to disk while more is still being written, so the final fsync finds
// little left to do instead of the whole file, and dirty memory stays
// small on a small device. Everything here is a hint: errors are
// ignored, the fsync reports any that matter.
package writeback

// Chunk is how much written data may pile up before the writeback of it
// is started.
const Chunk = 8 << 20
