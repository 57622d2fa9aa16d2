// Package backend is the object store as mediafs sees it: a small Store
// interface, its minio-go implementation (S3), and sentinel errors
// (ErrNotFound, ErrConflict, ErrUnavailable, ErrAccessDenied).
//
// It knows buckets, keys, ETags and metadata. It must never import go-fuse
// or know about inodes, file handles or the cache; upper layers must never
// see minio-go types.
package backend
