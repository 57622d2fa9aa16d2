// Package cache holds mediafs's local state: data files on disk, a Badger
// database with the journal of pending work and the index of clean cached
// objects, the upload workers, and the namespace overlay (the bucket's
// listings merged with the changes not uploaded yet).
//
// It works in object keys and must never import go-fuse or know about
// inodes; it reaches the object store only through backend.Store. Nothing a
// caller was told is saved (Flush returned) may be lost: data files and
// journal records are removed only after the bucket holds the object.
package cache
