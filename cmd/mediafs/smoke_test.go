package main

import (
	"bytes"
	"testing"
	"time"
)

func TestFileWrittenOnOneMountIsReadOnTheOther(t *testing.T) {
	e := newEnv(t)
	a := e.mount(t)
	b := e.mount(t)
	data := bytes.Repeat([]byte("mediafs "), 1000)
	writeFile(t, a.path("upload.jpg"), data)
	info := e.waitObject(t, "upload.jpg", data, 20*time.Second)
	if info.ContentType != "image/jpeg" {
		t.Errorf("Content-Type = %q, want image/jpeg", info.ContentType)
	}
	waitFile(t, b.path("upload.jpg"), data, 10*time.Second)
}
