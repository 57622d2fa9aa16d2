package backendtest

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mediafs/mediafs/backend"
)

func put(t *testing.T, m *Mem, key, data string, opts backend.PutOptions) (backend.Object, error) {
	t.Helper()
	return m.Put(context.Background(), key, strings.NewReader(data), int64(len(data)), opts)
}

func mustPut(t *testing.T, m *Mem, key, data string) backend.Object {
	t.Helper()
	o, err := put(t, m, key, data, backend.PutOptions{})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return o
}

func read(t *testing.T, m *Mem, key, etag string, off, n int64) (string, error) {
	t.Helper()
	r, err := m.Get(context.Background(), key, etag, off, n)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestPutThenStatReportsContentAndMetadata(t *testing.T) {
	m := NewMem()
	o, err := put(t, m, "a/b.jpg", "hello", backend.PutOptions{
		ContentType: "image/jpeg",
		Metadata:    map[string]string{"Mode": "33188", "uid": "1000"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if o.ETag != md5hex("hello") || o.Size != 5 || o.Key != "a/b.jpg" {
		t.Errorf("put returned %+v, want key a/b.jpg, size 5, etag md5", o)
	}
	st, err := m.Stat(context.Background(), "a/b.jpg")
	if err != nil {
		t.Fatal(err)
	}
	if st.ETag != o.ETag || st.ContentType != "image/jpeg" || st.LastModified.IsZero() {
		t.Errorf("stat = %+v", st)
	}
	if want := map[string]string{"mode": "33188", "uid": "1000"}; !mapsEqual(st.Metadata, want) {
		t.Errorf("metadata = %v, want %v (names lower-cased)", st.Metadata, want)
	}
	st.Metadata["mode"] = "0"
	if again, _ := m.Stat(context.Background(), "a/b.jpg"); again.Metadata["mode"] != "33188" {
		t.Errorf("a caller's change to returned metadata reached the store")
	}
	if _, err := m.Stat(context.Background(), "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("stat of a missing key = %v, want ErrNotFound", err)
	}
	plain := mustPut(t, m, "plain", "")
	if plain.ContentType != defaultContentType || plain.Metadata != nil || plain.ETag != md5hex("") {
		t.Errorf("put without options = %+v", plain)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestListIsOneLevelSortedWithPrefixes(t *testing.T) {
	m := NewMem()
	for _, k := range []string{"z", "a", "d/", "d/x", "d/y/1", "d/y/2", "d-e", "e/f/g", "d/y/"} {
		mustPut(t, m, k, k)
	}
	m.Set("meta", nil, "text/plain", map[string]string{"mode": "420"})
	tests := []struct {
		prefix   string
		objects  []string
		prefixes []string
	}{
		{"", []string{"a", "d-e", "meta", "z"}, []string{"d/", "e/"}},
		{"d/", []string{"d/", "d/x"}, []string{"d/y/"}},
		{"d/y/", []string{"d/y/", "d/y/1", "d/y/2"}, nil},
		{"e/", nil, []string{"e/f/"}},
		{"nope/", nil, nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("prefix=%q", tt.prefix), func(t *testing.T) {
			l, err := m.List(context.Background(), tt.prefix)
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, o := range l.Objects {
				keys = append(keys, o.Key)
				if o.ContentType != "" {
					t.Errorf("%s listed with Content-Type %q; S3 listings carry none", o.Key, o.ContentType)
				}
			}
			if !slices.Equal(keys, tt.objects) {
				t.Errorf("objects = %q, want %q", keys, tt.objects)
			}
			if !slices.Equal(l.Prefixes, tt.prefixes) {
				t.Errorf("prefixes = %q, want %q", l.Prefixes, tt.prefixes)
			}
		})
	}
	l, _ := m.List(context.Background(), "")
	for _, o := range l.Objects {
		if o.Key == "meta" && o.Metadata["mode"] != "420" {
			t.Errorf("listed metadata of meta = %v, want mode 420", o.Metadata)
		}
	}

	all, err := m.ListAll(context.Background(), "d/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range all {
		keys = append(keys, o.Key)
	}
	if want := []string{"d/", "d/x", "d/y/", "d/y/1", "d/y/2"}; !slices.Equal(keys, want) {
		t.Errorf("ListAll(d/) = %q, want %q", keys, want)
	}
}

func TestGetServesRangesAndChecksETag(t *testing.T) {
	m := NewMem()
	o := mustPut(t, m, "k", "0123456789")
	mustPut(t, m, "empty", "")
	tests := []struct {
		name    string
		key     string
		etag    string
		off, n  int64
		want    string
		wantErr error // nil: success; errAny: some non-sentinel error
	}{
		{"whole", "k", "", 0, -1, "0123456789", nil},
		{"middle", "k", "", 2, 3, "234", nil},
		{"to the end", "k", "", 7, -1, "789", nil},
		{"past the end is cut", "k", "", 8, 10, "89", nil},
		{"zero length", "k", "", 3, 0, "", nil},
		{"matching etag", "k", o.ETag, 0, 4, "0123", nil},
		{"changed etag", "k", "0000", 0, -1, "", backend.ErrConflict},
		{"missing", "nope", "", 0, -1, "", backend.ErrNotFound},
		{"missing with etag", "nope", o.ETag, 0, -1, "", backend.ErrNotFound},
		{"empty object", "empty", "", 0, -1, "", nil},
		{"start past the end", "k", "", 10, -1, "", errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := read(t, m, tt.key, tt.etag, tt.off, tt.n)
			switch {
			case tt.wantErr == errAny:
				if err == nil {
					t.Errorf("got %q, want an error", got)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				t.Errorf("err = %v", err)
			case got != tt.want:
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestPutConditions(t *testing.T) {
	m := NewMem()
	first := mustPut(t, m, "k", "v1")
	tests := []struct {
		name    string
		key     string
		opts    backend.PutOptions
		wantErr error
	}{
		{"if-none-match on existing", "k", backend.PutOptions{IfNoneMatch: true}, backend.ErrConflict},
		{"if-none-match on new", "new", backend.PutOptions{IfNoneMatch: true}, nil},
		{"if-match wrong etag", "k", backend.PutOptions{IfMatch: md5hex("other")}, backend.ErrConflict},
		{"if-match on missing", "missing", backend.PutOptions{IfMatch: first.ETag}, backend.ErrConflict},
		{"if-match right etag", "k", backend.PutOptions{IfMatch: first.ETag}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, beforeData, existed := m.Object(tt.key)
			_, err := put(t, m, tt.key, "v2-"+tt.name, tt.opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			after, afterData, exists := m.Object(tt.key)
			if tt.wantErr != nil {
				if existed != exists || before.ETag != after.ETag || !bytes.Equal(beforeData, afterData) {
					t.Errorf("a failed put changed the object")
				}
			} else if string(afterData) != "v2-"+tt.name {
				t.Errorf("data = %q after a successful put", afterData)
			}
		})
	}
}

type shortReader struct{}

func (shortReader) ReadAt(p []byte, off int64) (int, error) { return copy(p, "abc"), io.EOF }

func TestPutOfShortBodyFailsAndStoresNothing(t *testing.T) {
	m := NewMem()
	if _, err := m.Put(context.Background(), "k", shortReader{}, 10, backend.PutOptions{}); err == nil {
		t.Fatal("put of 3 bytes announced as 10 succeeded")
	}
	if _, _, ok := m.Object("k"); ok {
		t.Error("a failed put stored an object")
	}
}

func TestCopyKeepsOrReplacesMetadata(t *testing.T) {
	m := NewMem()
	src := m.Set("src", []byte("data"), "image/png", map[string]string{"mode": "33188", "mtime": "1"})
	ctx := context.Background()

	if _, err := m.Copy(ctx, "src", "kept", 4, backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	kept, data, _ := m.Object("kept")
	if string(data) != "data" || kept.ETag != src.ETag || kept.ContentType != "image/png" ||
		!mapsEqual(kept.Metadata, src.Metadata) {
		t.Errorf("copy without metadata = %+v %q, want the source's", kept, data)
	}

	md := map[string]string{"mode": "33261"}
	if _, err := m.Copy(ctx, "src", "src", 4, backend.PutOptions{Metadata: md, ContentType: "image/webp"}); err != nil {
		t.Fatal(err)
	}
	self, data, _ := m.Object("src")
	if string(data) != "data" || self.ContentType != "image/webp" || !mapsEqual(self.Metadata, md) {
		t.Errorf("metadata-only self copy = %+v %q, want mode 33261 only, image/webp", self, data)
	}
	md["mode"] = "0"
	if self, _, _ := m.Object("src"); self.Metadata["mode"] != "33261" {
		t.Error("the caller's metadata map is shared with the store")
	}

	if _, err := m.Copy(ctx, "src", "empty-md", 4, backend.PutOptions{Metadata: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if o, _, _ := m.Object("empty-md"); o.Metadata != nil || o.ContentType != defaultCopyContentType {
		t.Errorf("copy with empty metadata = %+v, want no metadata and the server's default type", o)
	}

	if _, err := m.Copy(ctx, "nope", "dst", 0, backend.PutOptions{}); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("copy of a missing source = %v, want ErrNotFound", err)
	}
	if _, _, ok := m.Object("dst"); ok {
		t.Error("a failed copy created its destination")
	}
}

func TestDeleteOfMissingKeyIsNotAnError(t *testing.T) {
	m := NewMem()
	mustPut(t, m, "k", "v")
	for range 2 {
		if err := m.Delete(context.Background(), "k"); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if _, err := m.Stat(context.Background(), "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("stat after delete = %v, want ErrNotFound", err)
	}
}

func TestDownStoreFailsEveryCallUntilUp(t *testing.T) {
	m := NewMem()
	mustPut(t, m, "k", "v")
	m.ResetCalls()
	m.SetDown(true)
	ctx := context.Background()
	// In this order, so that each call finds what it needs once up.
	calls := []struct {
		method string
		call   func() error
	}{
		{Stat, func() error { _, err := m.Stat(ctx, "k"); return err }},
		{List, func() error { _, err := m.List(ctx, ""); return err }},
		{ListAll, func() error { _, err := m.ListAll(ctx, ""); return err }},
		{Get, func() error { _, err := m.Get(ctx, "k", "", 0, -1); return err }},
		{Put, func() error { _, err := put(t, m, "k", "new", backend.PutOptions{}); return err }},
		{Copy, func() error { _, err := m.Copy(ctx, "k", "k2", 1, backend.PutOptions{}); return err }},
		{Delete, func() error { return m.Delete(ctx, "k") }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, backend.ErrUnavailable) {
			t.Errorf("%s while down = %v, want ErrUnavailable", c.method, err)
		}
	}
	if keys := m.Keys(); !slices.Equal(keys, []string{"k"}) {
		t.Errorf("keys after calls while down = %q, want only k", keys)
	}
	if _, data, _ := m.Object("k"); string(data) != "v" {
		t.Errorf("k = %q after a put while down", data)
	}
	m.SetDown(false)
	for _, c := range calls {
		if err := c.call(); err != nil {
			t.Errorf("%s once up again: %v", c.method, err)
		}
	}
	got := m.Calls()
	for _, c := range calls {
		if got[c.method] != 2 {
			t.Errorf("Calls()[%s] = %d, want 2 (failed calls count)", c.method, got[c.method])
		}
	}
	h := m.History()
	if len(h) != 2*len(calls) {
		t.Fatalf("history has %d calls, want %d", len(h), 2*len(calls))
	}
	for i, c := range h {
		if want := calls[i%len(calls)].method; c.Method != want || (i < len(calls)) != (c.Err != nil) {
			t.Errorf("history[%d] = %+v, want %s, failed only while down", i, c, want)
		}
	}
	m.ResetCalls()
	if len(m.Calls()) != 0 || len(m.History()) != 0 {
		t.Error("ResetCalls left counters or history")
	}
}

func TestCanceledContextIsUnavailable(t *testing.T) {
	m := NewMem()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Stat(ctx, "k"); !errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("stat with a canceled context = %v, want ErrUnavailable", err)
	}
}

func TestHookFailsOrHoldsChosenCalls(t *testing.T) {
	m := NewMem()
	mustPut(t, m, "src", "v")
	boom := errors.New("boom")
	m.SetHook(func(_ context.Context, c Call) error {
		if c.Method == Copy && c.Src == "src" {
			return boom
		}
		return nil
	})
	if _, err := m.Copy(context.Background(), "src", "dst", 1, backend.PutOptions{}); !errors.Is(err, boom) {
		t.Errorf("hooked copy = %v, want boom", err)
	}
	if err := m.Delete(context.Background(), "src"); err != nil {
		t.Errorf("unhooked delete = %v", err)
	}
	h := m.History()
	if len(h) < 2 || h[len(h)-2].Method != Copy || !errors.Is(h[len(h)-2].Err, boom) || h[len(h)-1].Method != Delete {
		t.Errorf("history = %+v, want the failed copy then the delete", h)
	}

	release := make(chan struct{})
	entered := make(chan struct{})
	m.SetHook(func(_ context.Context, c Call) error {
		if c.Method == List {
			close(entered)
			<-release
		}
		return nil
	})
	done := make(chan error)
	go func() { _, err := m.List(context.Background(), ""); done <- err }()
	<-entered
	mustPut(t, m, "during", "x") // other calls go on while one is held
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	m.SetHook(nil)
}

func TestConcurrentUseIsSafe(t *testing.T) {
	m := NewMem()
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				k := fmt.Sprintf("d%d/k%d", i%3, j%5)
				v := fmt.Sprintf("%d-%d", i, j)
				if _, err := m.Put(ctx, k, strings.NewReader(v), int64(len(v)), backend.PutOptions{}); err != nil {
					t.Error(err)
				}
				m.List(ctx, fmt.Sprintf("d%d/", i%3))
				m.Copy(ctx, k, k+".copy", 0, backend.PutOptions{Metadata: map[string]string{"mode": "1"}})
				if r, err := m.Get(ctx, k, "", 0, -1); err == nil {
					io.Copy(io.Discard, r)
					r.Close()
				}
				m.Delete(ctx, k+".copy")
				m.Calls()
			}
		})
	}
	wg.Wait()
	if got := m.Calls()[Put]; got != 8*50 {
		t.Errorf("Calls()[Put] = %d, want %d", got, 8*50)
	}
}
