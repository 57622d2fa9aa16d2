package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestFaultProbeCopyETag(t *testing.T) {
	e := newEnv(t)
	big := faultBytes(1, 40<<20)
	ctx := context.Background()
	info, err := e.client().PutObject(ctx, e.bucket, "src.mp4", bytes.NewReader(big), int64(len(big)), minio.PutObjectOptions{PartSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("put etag %q", info.ETag)
	for _, sz := range []int{40 << 20, 1000} {
		if sz == 1000 {
			e.putObject(t, "src.mp4", big[:1000], nil)
		}
		up, err := e.client().CopyObject(ctx, minio.CopyDestOptions{Bucket: e.bucket, Object: "dst.jpg", ReplaceMetadata: true, UserMetadata: map[string]string{"mode": "33188"}},
			minio.CopySrcOptions{Bucket: e.bucket, Object: "src.mp4"})
		if err != nil {
			t.Fatal(err)
		}
		st, _ := e.client().StatObject(ctx, e.bucket, "dst.jpg", minio.StatObjectOptions{})
		ss, _ := e.client().StatObject(ctx, e.bucket, "src.mp4", minio.StatObjectOptions{})
		t.Logf("size %d: copy returned etag %q; stat dst %q; stat src %q", sz, up.ETag, st.ETag, ss.ETag)
	}
}
