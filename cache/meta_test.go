package cache

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mediafs/mediafs/backend"
)

var testDefaults = Defaults{UID: 1000, GID: 100, FileMode: 0o644, DirMode: 0o755}

func TestAttrSurvivesMetadataRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		dir  bool
		a    Attr
	}{
		{"regular file", false, Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 1000, Mtime: time.Unix(1700000000, 0)}},
		{"executable, other owner", false, Attr{Mode: syscall.S_IFREG | 0o755, UID: 0, GID: 0, Mtime: time.Unix(1, 0)}},
		{"setuid and sticky bits", false, Attr{Mode: syscall.S_IFREG | 0o7755, UID: 65534, GID: 65534, Mtime: time.Unix(1700000000, 0)}},
		{"sub-second mtime (cp -p, rsync)", false, Attr{Mode: syscall.S_IFREG | 0o600, UID: 501, GID: 20, Mtime: time.Unix(1700000000, 123456789)}},
		{"mtime before 1970", false, Attr{Mode: syscall.S_IFREG | 0o644, Mtime: time.Unix(-1, 500000000)}},
		{"large ids", false, Attr{Mode: syscall.S_IFREG | 0o644, UID: 4294967294, GID: 4000000000, Mtime: time.Unix(1700000000, 0)}},
		{"symlink", false, Attr{Mode: syscall.S_IFLNK | 0o777, UID: 1, GID: 2, Mtime: time.Unix(1700000000, 1)}},
		{"directory", true, Attr{Mode: syscall.S_IFDIR | 0o750, UID: 3, GID: 4, Mtime: time.Unix(1600000000, 999999999)}},
	}
	lastMod := time.Unix(1234, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := metaFromAttr(tt.a)
			for k := range md {
				if k != strings.ToLower(k) {
					t.Errorf("metadata name %q is not lower-case", k)
				}
			}
			got := attrFromMeta(md, tt.dir, lastMod, testDefaults)
			if got.Mode != tt.a.Mode || got.UID != tt.a.UID || got.GID != tt.a.GID || !got.Mtime.Equal(tt.a.Mtime) {
				t.Errorf("round trip of %+v through %v = %+v", tt.a, md, got)
			}
		})
	}
}

func TestMetadataIsWhatS3fsWrites(t *testing.T) {
	md := metaFromAttr(Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: time.Unix(1700000000, 750000000)})
	want := map[string]string{
		backend.MetaMode:  "33188", // decimal st_mode, type bits included
		backend.MetaUID:   "1000",
		backend.MetaGID:   "100",
		backend.MetaMtime: "1700000000", // whole seconds
	}
	for k, v := range want {
		if md[k] != v {
			t.Errorf("%s = %q, want %q (all: %v)", k, md[k], v, md)
		}
	}
}

func TestAttrFromMetaFallsBackAndRepairs(t *testing.T) {
	lastMod := time.Unix(1500000000, 0)
	tests := []struct {
		name string
		md   map[string]string
		dir  bool
		want Attr
	}{
		{"no metadata: defaults and LastModified", nil, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: lastMod}},
		{"no metadata, directory", nil, true,
			Attr{Mode: syscall.S_IFDIR | 0o755, UID: 1000, GID: 100, Mtime: lastMod}},
		{"permission bits only keep the object's type", map[string]string{"mode": "420"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: lastMod}},
		{"permission bits only on a directory", map[string]string{"mode": "448"}, true,
			Attr{Mode: syscall.S_IFDIR | 0o700, UID: 1000, GID: 100, Mtime: lastMod}},
		{"file key claiming to be a directory is a file", map[string]string{"mode": "16877"}, false,
			Attr{Mode: syscall.S_IFREG | 0o755, UID: 1000, GID: 100, Mtime: lastMod}},
		{"directory key claiming to be a file is a directory", map[string]string{"mode": "33188"}, true,
			Attr{Mode: syscall.S_IFDIR | 0o644, UID: 1000, GID: 100, Mtime: lastMod}},
		{"garbage values are ignored", map[string]string{"mode": "rwx", "uid": "-1", "gid": "x", "mtime": "yesterday"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: lastMod}},
		{"s3fs fractional mtime", map[string]string{"mtime": "1700000000.25"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: time.Unix(1700000000, 250000000)}},
		{"nanoseconds beside whole seconds", map[string]string{"mtime": "1700000000", metaMtimeNs: "42"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: time.Unix(1700000000, 42)}},
		{"out of range nanoseconds are ignored", map[string]string{"mtime": "1700000000", metaMtimeNs: "1000000000"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: time.Unix(1700000000, 0)}},
		{"nanoseconds without mtime are ignored", map[string]string{metaMtimeNs: "42"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: lastMod}},
		{"ids only", map[string]string{"uid": "0", "gid": "0"}, false,
			Attr{Mode: syscall.S_IFREG | 0o644, UID: 0, GID: 0, Mtime: lastMod}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := attrFromMeta(tt.md, tt.dir, lastMod, testDefaults)
			if got.Mode != tt.want.Mode || got.UID != tt.want.UID || got.GID != tt.want.GID || !got.Mtime.Equal(tt.want.Mtime) {
				t.Errorf("attrFromMeta(%v, dir=%v) = %+v (mode %o), want %+v (mode %o)",
					tt.md, tt.dir, got, got.Mode, tt.want, tt.want.Mode)
			}
		})
	}
}

func TestParseMtime(t *testing.T) {
	tests := []struct {
		in     string
		want   time.Time
		wantOK bool
	}{
		{"1700000000", time.Unix(1700000000, 0), true},
		{"0", time.Unix(0, 0), true},
		{"-86400", time.Unix(-86400, 0), true},
		{"1700000000.5", time.Unix(1700000000, 500000000), true},
		{"1700000000.000000001", time.Unix(1700000000, 1), true},
		{"1700000000.1234567891234", time.Unix(1700000000, 123456789), true}, // cut to ns
		{"1700000000.", time.Unix(1700000000, 0), true},
		{"1700000000.x", time.Time{}, false},
		{"1700000000.-5", time.Time{}, false},
		{"", time.Time{}, false},
		{"abc", time.Time{}, false},
		{" 1700000000", time.Time{}, false},
		{"1.7e9", time.Time{}, false},
		{"99999999999999999999", time.Time{}, false},
	}
	for _, tt := range tests {
		got, ok := parseMtime(tt.in)
		if ok != tt.wantOK || (ok && !got.Equal(tt.want)) {
			t.Errorf("parseMtime(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestContentTypeFollowsTheExtension(t *testing.T) {
	tests := []struct {
		key     string
		symlink bool
		want    string
	}{
		{"photo.jpg", false, "image/jpeg"},
		{"PHOTO.JPG", false, "image/jpeg"},
		{"a/b/pic.jpeg", false, "image/jpeg"},
		{"icon.png", false, "image/png"},
		{"anim.gif", false, "image/gif"},
		{"modern.webp", false, "image/webp"},
		{"logo.svg", false, "image/svg+xml"},
		{"clip.mp4", false, "video/mp4"},
		{"doc.pdf", false, "application/pdf"},
		{"data.json", false, "application/json"},
		{"readme.txt", false, "text/plain; charset=utf-8"},
		{"index.html", false, "text/html; charset=utf-8"},
		{"Makefile", false, "application/octet-stream"},
		{"archive.unknownext", false, "application/octet-stream"},
		{".hidden", false, "application/octet-stream"},
		{"dir/", false, "application/x-directory"},
		{"link.jpg", true, "application/octet-stream"}, // the target path, not an image
	}
	for _, tt := range tests {
		if got := contentType(tt.key, tt.symlink); got != tt.want {
			t.Errorf("contentType(%q, symlink=%v) = %q, want %q", tt.key, tt.symlink, got, tt.want)
		}
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		seg   string
		valid bool
	}{
		{"photo.jpg", true},
		{"with space and ünïcödé", true},
		{".hidden", true},
		{"...", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{".", false},
		{"..", false},
		{strings.Repeat("a", 256), false},
		{"nul\x00byte", false},
		{"bad\xffutf8", false},
	}
	for _, tt := range tests {
		why := validName(tt.seg)
		if (why == "") != tt.valid {
			t.Errorf("validName(%q) = %q, want valid=%v", tt.seg, why, tt.valid)
		}
	}
}

func TestCheckName(t *testing.T) {
	long := strings.Repeat("d/", 520) + "f"
	tests := []struct {
		name, key string
		want      error
	}{
		{"ok.txt", "dir/ok.txt", nil},
		{strings.Repeat("n", 256), strings.Repeat("n", 256), syscall.ENAMETOOLONG},
		{"f", long, syscall.ENAMETOOLONG},
		{"..", "a/..", syscall.EINVAL},
		{"bad\xff", "bad\xff", syscall.EINVAL},
	}
	for _, tt := range tests {
		if got := CheckName(tt.name, tt.key); got != tt.want {
			t.Errorf("CheckName(%.20q, len %d) = %v, want %v", tt.name, len(tt.key), got, tt.want)
		}
	}
}

func TestKeyPaths(t *testing.T) {
	tests := []struct {
		key, base, parent string
	}{
		{"a", "a", ""},
		{"a/b", "b", "a/"},
		{"a/b/", "b", "a/"},
		{"a/b/c.txt", "c.txt", "a/b/"},
		{"top/", "top", ""},
		{"", "", ""},
	}
	for _, tt := range tests {
		if got := baseName(tt.key); got != tt.base {
			t.Errorf("baseName(%q) = %q, want %q", tt.key, got, tt.base)
		}
		if got := parentDir(tt.key); got != tt.parent {
			t.Errorf("parentDir(%q) = %q, want %q", tt.key, got, tt.parent)
		}
	}
}

func TestEntryFromObject(t *testing.T) {
	lm := time.Unix(1600000000, 0)
	tests := []struct {
		name string
		o    backend.Object
		want Entry
	}{
		{"file", backend.Object{Key: "a/b.jpg", Size: 10, ETag: "e", LastModified: lm},
			Entry{Key: "a/b.jpg", Name: "b.jpg", Size: 10, ETag: "e",
				Attr: Attr{Mode: syscall.S_IFREG | 0o644, UID: 1000, GID: 100, Mtime: lm}}},
		{"directory marker", backend.Object{Key: "a/", Size: 3, ETag: "e", LastModified: lm},
			Entry{Key: "a/", Name: "a", Dir: true, ETag: "e",
				Attr: Attr{Mode: syscall.S_IFDIR | 0o755, UID: 1000, GID: 100, Mtime: lm}}},
		{"symlink", backend.Object{Key: "l", Size: 6, LastModified: lm,
			Metadata: map[string]string{"mode": "41471"}}, // S_IFLNK|0777
			Entry{Key: "l", Name: "l", Symlink: true, Size: 6,
				Attr: Attr{Mode: syscall.S_IFLNK | 0o777, UID: 1000, GID: 100, Mtime: lm}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := entryFromObject(tt.o, testDefaults)
			if got.Key != tt.want.Key || got.Name != tt.want.Name || got.Dir != tt.want.Dir ||
				got.Symlink != tt.want.Symlink || got.Size != tt.want.Size || got.ETag != tt.want.ETag ||
				got.Attr.Mode != tt.want.Attr.Mode || got.Attr.UID != tt.want.Attr.UID ||
				!got.Attr.Mtime.Equal(tt.want.Attr.Mtime) {
				t.Errorf("entryFromObject(%+v) = %+v, want %+v", tt.o, got, tt.want)
			}
		})
	}
}
