package backend

import (
	"context"
	"errors"
)

// ErrNotSupported means the server offers no change feed: Watch will not
// work against it however often it is tried (AWS S3, Google Cloud
// Storage, most S3-compatible servers other than MinIO).
var ErrNotSupported = errors.New("change feed not supported by the server")

// Change is one object created or removed in the bucket.
type Change struct {
	// Object is the object as the event describes it: Key (relative to
	// the store's prefix, never URL-encoded), and for a creation Size,
	// ETag, ContentType, Metadata (lower-case names without x-amz-meta-,
	// as Stat gives them) and LastModified (the event's time).
	Object Object
	// Removed is true for a delete.
	Removed bool
	// Event is the server's event name, for logs ("s3:ObjectCreated:Put").
	Event string
}

// FeedEvent is what a Watcher reports: a batch of changes, or a change of
// the stream's state.
type FeedEvent struct {
	// Changes, in the order the server sent them.
	Changes []Change
	// Live is set on the event that reports the stream (re)established and
	// delivering: changes made before it may have been missed, during the
	// gap since the last Down.
	Live bool
	// Down is set when the stream stopped delivering (dropped, refused,
	// stalled); Err says why. The Watcher reconnects by itself.
	Down bool
	Err  error
}

// Watcher is implemented by stores whose server can push changes. The
// cache uses it, when there is one, to learn of other machines' changes
// at once instead of by polling listings.
type Watcher interface {
	// Watch follows creations and removals under the store's prefix and
	// calls on, from one goroutine, until ctx ends; it reconnects with
	// backoff when the stream drops. It returns ctx's error, or
	// ErrNotSupported (wrapped) as soon as the server refuses the feed
	// outright.
	Watch(ctx context.Context, on func(FeedEvent)) error
}
