package cache

import (
	"mime"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mediafs/mediafs/backend"
)

// Entry is what the file system sees of one name.
type Entry struct {
	Key     string // object key; directories end in "/"
	Name    string // last path segment
	Dir     bool
	Symlink bool
	Size    int64
	Attr    Attr
	ETag    string
	// Pending is true while a local change to this name is not uploaded.
	Pending bool
}

// Defaults are the attributes of objects that carry no s3fs metadata.
type Defaults struct {
	UID, GID          uint32
	FileMode, DirMode uint32 // permission bits only
}

// attrFromMeta reads the s3fs headers (x-amz-meta-mode, -uid, -gid,
// -mtime), falling back to d and the object's LastModified.
func attrFromMeta(md map[string]string, dir bool, lastMod time.Time, d Defaults) Attr {
	a := Attr{UID: d.UID, GID: d.GID, Mtime: lastMod}
	if dir {
		a.Mode = syscall.S_IFDIR | d.DirMode
	} else {
		a.Mode = syscall.S_IFREG | d.FileMode
	}
	if v, ok := md[backend.MetaMode]; ok {
		if m, err := strconv.ParseUint(v, 10, 32); err == nil {
			m32 := uint32(m)
			switch {
			case m32&syscall.S_IFMT == 0:
				a.Mode = a.Mode&syscall.S_IFMT | m32&07777
			case dir && m32&syscall.S_IFMT != syscall.S_IFDIR:
				a.Mode = syscall.S_IFDIR | m32&07777
			case !dir && m32&syscall.S_IFMT != syscall.S_IFREG && m32&syscall.S_IFMT != syscall.S_IFLNK:
				// A directory, device, FIFO, socket or no valid type on a
				// file key: the mount shows a regular file, so it is one.
				a.Mode = syscall.S_IFREG | m32&07777
			default:
				a.Mode = m32 & (syscall.S_IFMT | 07777)
			}
		}
	}
	if v, ok := md[backend.MetaUID]; ok {
		if u, err := strconv.ParseUint(v, 10, 32); err == nil {
			a.UID = uint32(u)
		}
	}
	if v, ok := md[backend.MetaGID]; ok {
		if g, err := strconv.ParseUint(v, 10, 32); err == nil {
			a.GID = uint32(g)
		}
	}
	if v, ok := md[backend.MetaMtime]; ok {
		if t, ok := parseMtime(v); ok {
			if ns, err := strconv.ParseInt(md[metaMtimeNs], 10, 64); err == nil && ns > 0 && ns < 1e9 && t.Nanosecond() == 0 {
				t = t.Add(time.Duration(ns))
			}
			a.Mtime = t
		}
	}
	return a
}

// metaMtimeNs carries the sub-second part of mtime beside s3fs's whole
// seconds, so that cp -a and rsync see the exact time they set.
const metaMtimeNs = "mediafs-mtime-ns"

// parseMtime accepts s3fs's integer seconds and "seconds.nanoseconds".
func parseMtime(v string) (time.Time, bool) {
	sec, frac, _ := strings.Cut(v, ".")
	s, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	var ns int64
	if frac != "" {
		if len(frac) > 9 {
			frac = frac[:9]
		}
		frac += strings.Repeat("0", 9-len(frac))
		// Digits only: "1.7e9" is not 1970, and a sign is no fraction.
		n, err := strconv.ParseUint(frac, 10, 64)
		if err != nil {
			return time.Time{}, false
		}
		ns = int64(n)
	}
	return time.Unix(s, ns), true
}

// metaFromAttr writes the s3fs headers. mtime is integer seconds, as s3fs
// writes it, so either tool reads the other's objects.
func metaFromAttr(a Attr) map[string]string {
	return map[string]string{
		backend.MetaMode:  strconv.FormatUint(uint64(a.Mode), 10),
		backend.MetaUID:   strconv.FormatUint(uint64(a.UID), 10),
		backend.MetaGID:   strconv.FormatUint(uint64(a.GID), 10),
		backend.MetaMtime: strconv.FormatInt(a.Mtime.Unix(), 10),
		metaMtimeNs:       strconv.Itoa(a.Mtime.Nanosecond()),
	}
}

// contentType picks the Content-Type from the extension so that a CDN
// serves the object correctly.
func contentType(key string, symlink bool) string {
	if strings.HasSuffix(key, "/") {
		return "application/x-directory"
	}
	if symlink {
		return "application/octet-stream"
	}
	if t := mime.TypeByExtension(strings.ToLower(path.Ext(key))); t != "" {
		return t
	}
	return "application/octet-stream"
}

func init() {
	// The system mime database may be missing in containers; the types a
	// media folder holds most must still be right.
	for ext, t := range map[string]string{
		".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
		".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml",
		".avif": "image/avif", ".mp4": "video/mp4", ".webm": "video/webm",
		".mp3": "audio/mpeg", ".pdf": "application/pdf", ".json": "application/json",
		".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8",
		".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
		".zip": "application/zip", ".csv": "text/csv; charset=utf-8",
	} {
		if mime.TypeByExtension(ext) == "" {
			_ = mime.AddExtensionType(ext, t)
		}
	}
}

// entryFromObject converts a listed or stat'ed object.
func entryFromObject(o backend.Object, d Defaults) Entry {
	dir := strings.HasSuffix(o.Key, "/")
	e := Entry{Key: o.Key, Name: baseName(o.Key), Dir: dir, Size: o.Size, ETag: o.ETag,
		Attr: attrFromMeta(o.Metadata, dir, o.LastModified, d)}
	if !dir && e.Attr.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		e.Symlink = true
	}
	if dir {
		e.Size = 0
	}
	return e
}

func dirEntry(key string, d Defaults) Entry {
	return Entry{Key: key, Name: baseName(key), Dir: true,
		Attr: Attr{Mode: syscall.S_IFDIR | d.DirMode, UID: d.UID, GID: d.GID}}
}

// baseName is the last segment of a key ("a/b/" -> "b", "a/c" -> "c").
func baseName(key string) string {
	k := strings.TrimSuffix(key, "/")
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		return k[i+1:]
	}
	return k
}

// parentDir is the directory key holding key ("a/b/" -> "a/", "c" -> "").
func parentDir(key string) string {
	k := strings.TrimSuffix(key, "/")
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		return k[:i+1]
	}
	return ""
}
