package cache

// Fuzz targets for the parsers of untrusted or persisted input: key
// segments from the bucket and names from the kernel, journal records read
// back from Badger, s3fs metadata headers, and block bitmaps.
//
// `go test ./cache` runs each target on its seed corpus (and on anything
// saved under testdata/fuzz/) as an ordinary test. To fuzz for real, one
// target at a time:
//
//	go test -run '^$' -fuzz=FuzzValidName -fuzztime=5m ./cache
//	go test -run '^$' -fuzz=FuzzDecodeRecord -fuzztime=5m ./cache
//	go test -run '^$' -fuzz=FuzzAttrFromMeta -fuzztime=5m ./cache
//	go test -run '^$' -fuzz=FuzzBitmap -fuzztime=5m ./cache
//
// A crasher is written to testdata/fuzz/FuzzX/ and from then on replayed
// by the plain test run; keep it there once fixed.

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

// FuzzValidName: validName and CheckName never panic, CheckName accepts
// only what listings accept, and a name it accepts maps to a key (as a
// file and as a directory) and back to the same name and parent.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "photo.jpg", ".", "..", "...", "", " ", "a b", ".hidden", "é", "日本語",
		"\x00", "a\x00b", "\xff", "\xc3", "a/b", "/", "a/", strings.Repeat("x", 255), strings.Repeat("x", 256),
		strings.Repeat("é", 128), "con", "a\\b", "\n", "%2F", "a\u202eb"} {
		f.Add(s, uint16(0))
	}
	f.Add("n", uint16(1020))
	f.Fuzz(func(t *testing.T, name string, depth uint16) {
		why := validName(name)
		// A parent directory key of some length (the key limit counts it).
		var dirKey string
		if depth > 0 {
			seg := strings.Repeat("d", int(depth%300)+1)
			for len(dirKey)+len(seg)+1 <= int(depth) {
				dirKey += seg + "/"
			}
		}
		key := dirKey + name
		err := CheckName(name, key)
		switch {
		case err == nil:
		case errors.Is(err, syscall.ENAMETOOLONG):
			if len(name) <= 255 && len(key) <= 1024 {
				t.Fatalf("CheckName(%q) = ENAMETOOLONG for a %d-byte name, %d-byte key", name, len(name), len(key))
			}
			return
		case errors.Is(err, syscall.EINVAL):
			if why == "" {
				t.Fatalf("CheckName(%q) = EINVAL but validName accepts it", name)
			}
			return
		default:
			t.Fatalf("CheckName(%q) = %v, want nil, ENAMETOOLONG or EINVAL", name, err)
		}
		if why != "" {
			t.Fatalf("CheckName accepts %q, which listings leave out (%s)", name, why)
		}
		if len(name) > 255 || len(key) > 1024 {
			t.Fatalf("CheckName accepts a %d-byte name / %d-byte key", len(name), len(key))
		}
		if strings.Contains(name, "/") {
			// The kernel never passes a name with a slash; such a name
			// is not one path segment.
			return
		}
		// File key.
		if IsDirKey(key) {
			t.Fatalf("file key %q of name %q reads as a directory key", key, name)
		}
		if got := baseName(key); got != name {
			t.Fatalf("baseName(%q) = %q, want %q", key, got, name)
		}
		if got := parentDir(key); got != dirKey {
			t.Fatalf("parentDir(%q) = %q, want %q", key, got, dirKey)
		}
		// As listed in dirKey: fetchListing's mapping.
		if got := strings.TrimSuffix(key[len(dirKey):], "/"); got != name || validName(got) != "" {
			t.Fatalf("listing of %q in %q gives name %q", key, dirKey, got)
		}
		// Directory key (a marker "name/", a common prefix).
		dk := key + "/"
		if !IsDirKey(dk) {
			t.Fatalf("directory key %q does not read as one", dk)
		}
		if got := baseName(dk); got != name {
			t.Fatalf("baseName(%q) = %q, want %q", dk, got, name)
		}
		if got := parentDir(dk); got != dirKey {
			t.Fatalf("parentDir(%q) = %q, want %q", dk, got, dirKey)
		}
		if got := strings.TrimSuffix(dk[len(dirKey):], "/"); got != name {
			t.Fatalf("listing of prefix %q in %q gives name %q", dk, dirKey, got)
		}
		// The file and its directory form name the same entry.
		if e := dirEntry(dk, Defaults{}); e.Name != name || !e.Dir {
			t.Fatalf("dirEntry(%q) = %+v", dk, e)
		}
	})
}

// FuzzDecodeRecord: decodeRecord never panics on what Badger hands back,
// and a record it accepts encodes stably: encode(decode(x)) decodes to
// the same record and encodes to the same bytes. The same for Clean.
func FuzzDecodeRecord(f *testing.F) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, r := range []Record{
		{V: 1, Op: OpPut, DataID: 7, Size: 123, Attr: Attr{Mode: syscall.S_IFREG | 0o644, UID: 1, GID: 2, Mtime: since}, Gen: 3, Since: since},
		{V: 1, Op: OpCopy, Src: "a/b.jpg", SrcSize: 9, Attr: Attr{Mode: syscall.S_IFREG | 0o600}, Gen: 1, InBucket: true},
		{V: 1, Op: OpDelete, After: "x", Gen: 9},
		{V: 1, Op: OpPut, DataID: 1 << 60, BaseETag: "\"abc\"", Excl: true, Symlink: true, Uploaded: true, Gen: math.MaxUint64},
	} {
		f.Add(encode(r))
	}
	f.Add(encode(Clean{V: 1, DataID: 3, ETag: "e", Size: 5, Partial: true, Attr: &Attr{Mode: 0o100644}}))
	for _, s := range []string{``, `{}`, `null`, `[]`, `{"v":2}`, `{"v":-1}`, `{"gen":-1}`, `{"gen":1e30}`,
		`{"since":"0000-01-01T00:00:00Z"}`, `{"since":"9999-12-31T23:59:59-23:59"}`, `{"since":"0000-01-01T00:00:00+23:59"}`,
		`{"attr":{"mtime":"not a time"}}`, `{"attr":{"mode":4294967296}}`, `{"op":"\u0000"}`, `{"src":"\ud800"}`,
		`{"size":-9223372036854775808}`, `{"data":18446744073709551615}`, `{"v":1,"v":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err == nil {
			if r.V > recordVersion {
				t.Fatalf("decodeRecord accepted version %d", r.V)
			}
			enc := encode(r)
			r2, err := decodeRecord(enc)
			if err != nil {
				t.Fatalf("decodeRecord(encode(%+v)) = %v (from %q)", r, err, enc)
			}
			if enc2 := encode(r2); !bytes.Equal(enc, enc2) {
				t.Fatalf("unstable encoding:\n  %s\n  %s", enc, enc2)
			}
			// What putRecord stores must read back too.
			r.V = recordVersion
			if _, err := decodeRecord(encode(r)); err != nil {
				t.Fatalf("putRecord's form of %+v does not decode: %v", r, err)
			}
		}
		var c Clean
		if json.Unmarshal(b, &c) == nil {
			enc := encode(c)
			var c2 Clean
			if err := json.Unmarshal(enc, &c2); err != nil {
				t.Fatalf("Clean %q does not decode: %v", enc, err)
			}
			if enc2 := encode(c2); !bytes.Equal(enc, enc2) {
				t.Fatalf("unstable Clean encoding:\n  %s\n  %s", enc, enc2)
			}
		}
	})
}

var fuzzDefaults = Defaults{UID: 1000, GID: 100, FileMode: 0o644, DirMode: 0o755}

// FuzzAttrFromMeta: arbitrary s3fs metadata never panics, the mode has
// exactly one file type consistent with the key (a directory for a
// directory key, a regular file or a symlink otherwise) and no bits
// outside type and permissions, and the attributes survive being written
// back as metadata.
func FuzzAttrFromMeta(f *testing.F) {
	for _, m := range []string{"", "420", "33188", "16877", "41471", "4095", "4294967295", "4294967296", "-1",
		"0", "4096", "8630", "49590", "61440", "126976", "0x1ff", " 420", "1e3"} {
		f.Add(m, "1000", "100", "1700000000", "", false, uint8(0xff), int64(1500000000))
		f.Add(m, "0", "0", "1700000000.5", "42", true, uint8(0xff), int64(0))
	}
	f.Add("", "", "", "-62135596801", "999999999", false, uint8(0x0c), int64(-1))
	f.Add("", "", "", "9223372036854775807", "1", false, uint8(0x18), int64(math.MaxInt64/1_000_000_000))
	f.Add("", "", "", "1.", "", false, uint8(0x08), int64(1))
	f.Fuzz(func(t *testing.T, mode, uid, gid, mtime, ns string, dir bool, present uint8, lastMod int64) {
		md := map[string]string{}
		for i, kv := range [][2]string{{backend.MetaMode, mode}, {backend.MetaUID, uid}, {backend.MetaGID, gid},
			{backend.MetaMtime, mtime}, {metaMtimeNs, ns}} {
			if present&(1<<i) != 0 {
				md[kv[0]] = kv[1]
			}
		}
		lm := time.Unix(lastMod%(1<<40), 0)
		a := attrFromMeta(md, dir, lm, fuzzDefaults)
		typ := a.Mode & syscall.S_IFMT
		if dir && typ != syscall.S_IFDIR {
			t.Fatalf("directory with mode %o (type %o) from %v", a.Mode, typ, md)
		}
		if !dir && typ != syscall.S_IFREG && typ != syscall.S_IFLNK {
			t.Fatalf("file with mode %o (type %o) from %v", a.Mode, typ, md)
		}
		if a.Mode&^uint32(syscall.S_IFMT|0o7777) != 0 {
			t.Fatalf("mode %o has bits outside type and permissions (from %v)", a.Mode, md)
		}
		// The entry a listing makes of it agrees.
		key := "k"
		if dir {
			key = "k/"
		}
		e := entryFromObject(backend.Object{Key: key, Metadata: md, LastModified: lm, Size: 3}, fuzzDefaults)
		if e.Dir != dir || e.Symlink != (!dir && typ == syscall.S_IFLNK) || e.Attr.Mode != a.Mode {
			t.Fatalf("entryFromObject(%v) = %+v, attrFromMeta gives mode %o", md, e, a.Mode)
		}
		// Written back (chmod, rename by copy) and read again: the same.
		b := attrFromMeta(metaFromAttr(a), dir, lm, fuzzDefaults)
		if b.Mode != a.Mode || b.UID != a.UID || b.GID != a.GID || !b.Mtime.Equal(a.Mtime) {
			t.Fatalf("round trip through metadata: %+v -> %v -> %+v", a, metaFromAttr(a), b)
		}
		if _, err := strconv.ParseInt(metaFromAttr(a)[backend.MetaMtime], 10, 64); err != nil {
			t.Fatalf("mtime header %q is not integer seconds", metaFromAttr(a)[backend.MetaMtime])
		}
	})
}

// FuzzBitmap: a block map's encoding loads back as the same bitmap, and
// whatever bytes are stored under its key (a torn or foreign value) load
// as an error or a bitmap, never a panic.
func FuzzBitmap(f *testing.F) {
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	f.Add([]byte{0xff}, uint16(8), []byte(`{"n":1,"bits":"AQ=="}`))
	f.Add([]byte{0x01, 0x80}, uint16(16), []byte(`{"n":9,"bits":"AA=="}`))
	f.Add([]byte{0xa5, 0x5a, 0x0f}, uint16(20), []byte(`{"n":-1,"bits":""}`))
	f.Add([]byte{}, uint16(0), []byte(`{"n":0}`))
	f.Add([]byte{0x00}, uint16(3), []byte(`{"n":1000000,"bits":null}`))
	f.Add([]byte{0x7f}, uint16(7), []byte(`not json`))
	f.Fuzz(func(t *testing.T, bits []byte, n uint16, raw []byte) {
		nb := min(int(n), len(bits)*8)
		have := make([]bool, nb)
		for i := range have {
			have[i] = bits[i/8]&(1<<(i%8)) != 0
		}
		m := newBlockMap(nil, "k", "e", int64(nb)*blockSize, 1, nil, have)
		if len(m.have) != nb {
			t.Fatalf("newBlockMap kept %d of %d blocks", len(m.have), nb)
		}
		missing := 0
		for _, h := range have {
			if !h {
				missing++
			}
		}
		if m.missing != missing || len(m.order) != nb-missing {
			t.Fatalf("newBlockMap: missing %d, order %d; want %d, %d", m.missing, len(m.order), missing, nb-missing)
		}
		enc := m.encodeLocked()
		var got []bool
		if err := db.Update(func(txn *badger.Txn) error {
			if err := txn.Set(bKey(1), enc); err != nil {
				return err
			}
			var err error
			got, err = loadBitmap(txn, 1)
			return err
		}); err != nil {
			t.Fatalf("loadBitmap of %s: %v", enc, err)
		}
		if len(got) != nb {
			t.Fatalf("loadBitmap: %d blocks, want %d (%s)", len(got), nb, enc)
		}
		for i := range got {
			if got[i] != have[i] {
				t.Fatalf("block %d: loaded %v, stored %v (%s)", i, got[i], have[i], enc)
			}
		}
		// Any stored value: an error or a bitmap, never a panic; a bitmap
		// that does not fit the object is then ignored by newBlockMap.
		db.Update(func(txn *badger.Txn) error {
			if err := txn.Set(bKey(2), raw); err != nil {
				return err
			}
			h, err := loadBitmap(txn, 2)
			if err == nil {
				m := newBlockMap(nil, "k", "e", 3*blockSize, 2, nil, h)
				if len(m.have) != 3 {
					t.Fatalf("newBlockMap kept a %d-block bitmap for a 3-block object", len(m.have))
				}
			}
			return nil
		})
	})
}
