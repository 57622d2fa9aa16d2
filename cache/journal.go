package cache

// Journal record format (version 1).
//
// Badger keys:
//
//	j/<object key>  Record: one pending operation on that key (JSON)
//	c/<object key>  Clean: a local data file that holds exactly the
//	                object version with the given ETag (JSON); a Partial
//	                one holds only the blocks its bitmap lists
//	b/<data id>     the block bitmap of a Partial clean file
//	meta/instance   this cache's random id, in upload tags
//	seq/data        Badger sequence of data file ids
//
// A Record is the whole pending state of one key; later changes replace it
// (its Gen grows by one each time), so rewrites coalesce into one upload.
//
//	Op "put":    upload data file DataID (Size bytes) with Attr. Dir
//	             records (key ending in "/") have no data file.
//	Op "copy":   server-side copy Src -> key with Attr as new metadata
//	             (Src == key is a metadata-only update: chmod, utime).
//	Op "delete": delete key. When After is set, the delete waits while
//	             j/<After> is a copy from this key, so a rename never
//	             deletes its source before the copy exists.
//
// A directory rename writes all its records in one transaction, so a crash
// leaves either none or all of them, and the uploader finishes the rest.
//
// The uploader removes a record only if its Gen is still the one it
// uploaded; otherwise the key changed meanwhile and is uploaded again.

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// recordVersion is stored in every record; readers refuse newer versions.
const recordVersion = 1

// Journal operations.
const (
	OpPut    = "put"
	OpCopy   = "copy"
	OpDelete = "delete"
)

// Attr are the file attributes that travel with an object.
type Attr struct {
	Mode  uint32    `json:"mode"` // full st_mode, type bits included
	UID   uint32    `json:"uid"`
	GID   uint32    `json:"gid"`
	Mtime time.Time `json:"mtime"`
}

// Record is one pending operation on a key.
type Record struct {
	V      int    `json:"v"`
	Op     string `json:"op"`
	DataID uint64 `json:"data,omitempty"`
	Size   int64  `json:"size"`
	Attr   Attr   `json:"attr"`
	// Src is the copy source; SrcSize its size.
	Src     string `json:"src,omitempty"`
	SrcSize int64  `json:"srcSize,omitempty"`
	After   string `json:"after,omitempty"`
	// BaseETag is the version this change was based on ("" for a new
	// object); Excl marks an O_EXCL create.
	BaseETag string `json:"base,omitempty"`
	Excl     bool   `json:"excl,omitempty"`
	// Symlink marks a put whose data is a symlink target.
	Symlink bool `json:"symlink,omitempty"`
	// Uploaded is set once some generation of this key reached the bucket.
	Uploaded bool `json:"uploaded,omitempty"`
	// UploadedGen is the latest generation known to be in the bucket
	// (with --upload=close a close waits for its generation).
	UploadedGen uint64 `json:"uploaded_gen,omitempty"`
	// InBucket is set when the bucket may hold an object under this key
	// that the change replaces though it is based on no version of it
	// (a create over a pending delete, say): dropping the change must
	// still delete the object.
	InBucket bool `json:"inBucket,omitempty"`
	// Sent is set when a request writing this key went unanswered (a
	// timeout, a lost connection): the server may still carry it out (a
	// hung server does when it wakes), so the key may hold an object
	// that dropping the change must delete. Unlike InBucket it does not
	// lift the If-None-Match of an O_EXCL create: that object is ours.
	Sent  bool      `json:"sent,omitempty"`
	Gen   uint64    `json:"gen"`
	Since time.Time `json:"since"`
}

// Clean records a data file that holds one object version.
type Clean struct {
	V      int    `json:"v"`
	DataID uint64 `json:"data"`
	ETag   string `json:"etag"`
	Size   int64  `json:"size"`
	// Partial marks a sparse file filled block by block; b/<data id>
	// holds its bitmap (see blocks.go).
	Partial bool `json:"partial,omitempty"`
	// Attr are the version's attributes, so that a restart while the
	// store is unreachable can still serve the file by name (see
	// Cache.cachedEntry). Older records have none: mount defaults.
	Attr *Attr `json:"attr,omitempty"`
}

// inBucket reports whether, while r is the pending record of key, the
// bucket may hold an object under key.
func (r Record) inBucket(key string) bool {
	return r.InBucket || r.Sent || r.Uploaded || r.BaseETag != "" || r.Op == OpDelete ||
		(r.Op == OpCopy && r.Src == key)
}

// sentApart is r without Sent: a new generation carries Sent as it is, so
// that it keeps an O_EXCL create's If-None-Match (InBucket would lift it).
func (r Record) sentApart() Record {
	r.Sent = false
	return r
}

func jKey(key string) []byte { return []byte("j/" + key) }
func cKey(key string) []byte { return []byte("c/" + key) }

func decodeRecord(b []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("journal record: %w", err)
	}
	if r.V > recordVersion {
		return r, fmt.Errorf("journal record version %d is newer than this mediafs (%d)", r.V, recordVersion)
	}
	return r, nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs always marshal
	}
	return b
}

// getRecord reads j/key inside txn; ok is false when there is none.
func getRecord(txn *badger.Txn, key string) (Record, bool, error) {
	it, err := txn.Get(jKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	var r Record
	err = it.Value(func(v []byte) error {
		var derr error
		r, derr = decodeRecord(v)
		return derr
	})
	return r, err == nil, err
}

func putRecord(txn *badger.Txn, key string, r Record) error {
	markTxn(txn, key, false)
	hintTxn(txn, key, plainDelete(key, r))
	r.V = recordVersion
	if r.Since.IsZero() {
		r.Since = time.Now()
	}
	return txn.Set(jKey(key), encode(r))
}

// deleteRecord removes j/key inside txn.
func deleteRecord(txn *badger.Txn, key string) error {
	markTxn(txn, key, true)
	return txn.Delete(jKey(key))
}

func getClean(txn *badger.Txn, key string) (Clean, bool, error) {
	it, err := txn.Get(cKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Clean{}, false, nil
	}
	if err != nil {
		return Clean{}, false, err
	}
	var c Clean
	err = it.Value(func(v []byte) error { return json.Unmarshal(v, &c) })
	return c, err == nil, err
}

// scanRecords calls fn for every record whose key starts with prefix.
func scanRecords(txn *badger.Txn, prefix string, fn func(key string, r Record) error) error {
	p := jKey(prefix)
	opts := badger.DefaultIteratorOptions
	opts.Prefix = p
	it := txn.NewIterator(opts)
	defer it.Close()
	for it.Seek(p); it.ValidForPrefix(p); it.Next() {
		item := it.Item()
		k := string(item.Key()[2:])
		var r Record
		if err := item.Value(func(v []byte) error {
			var derr error
			r, derr = decodeRecord(v)
			return derr
		}); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
		if err := fn(k, r); err != nil {
			return err
		}
	}
	return nil
}

// openDB opens Badger tuned for a small footprint: the journal holds
// thousands of small records, not gigabytes.
func openDB(dir string, logf func(string, ...any)) (*badger.DB, error) {
	opts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{logf}).
		WithSyncWrites(false).
		WithMemTableSize(16 << 20).
		WithValueThreshold(1 << 10).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		// Read-modify-write of one key's record (a close racing with the
		// uploader's finish) must retry, not lose an update.
		WithDetectConflicts(true)
	db, err := badger.Open(opts)
	if err != nil {
		if isLockErr(err) {
			return nil, fmt.Errorf("cache dir %s is in use by another mediafs (one daemon per cache dir): %w", dir, err)
		}
		return nil, fmt.Errorf("open journal in %s: %w", dir, err)
	}
	return db, nil
}

type badgerLogger struct{ logf func(string, ...any) }

func (l badgerLogger) Errorf(f string, a ...any)   { l.logf("badger: "+f, a...) }
func (l badgerLogger) Warningf(f string, a ...any) { l.logf("badger: "+f, a...) }
func (badgerLogger) Infof(string, ...any)          {}
func (badgerLogger) Debugf(string, ...any)         {}
