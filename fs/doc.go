// Package fs is the FUSE side of mediafs: the node tree (go-fuse v2 fs
// API) that turns paths into object keys and file system operations into
// calls on the cache.
//
// It knows files, directories and inodes; it must never import minio-go or
// speak HTTP, and it must never block a FUSE request on the network without
// a deadline. Go errors become errnos in exactly one place (errno.go).
package fs
