package main

import (
	"bytes"
	"fmt"
	"os"
	"testing"
	"time"
)

func TestFaultProbeBigOverwriteRename(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	os.Mkdir(m.path("p"), 0o755)
	for i := 0; i < 12; i++ {
		big := faultBytes(int64(i), 40<<20)
		small := faultBytes(int64(i)+100, 77962)
		k := fmt.Sprintf("p/big-%d.mp4", i)
		writeFile(t, m.path(k), big)
		time.Sleep(time.Duration(i%4) * 300 * time.Millisecond) // upload in flight or done
		writeFile(t, m.path(k), small)
		to := fmt.Sprintf("p/moved-%d.jpg", i)
		if i%2 == 0 {
			time.Sleep(300 * time.Millisecond)
		}
		if err := os.Rename(m.path(k), m.path(to)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(m.path(to))
		if err != nil || !bytes.Equal(b, small) {
			t.Errorf("round %d: %s: %v, %d bytes (big? %v)", i, to, err, len(b), bytes.Equal(b, big))
		}
		if i%3 == 2 {
			m.kill9(t)
			m.restart(t)
			b, err := os.ReadFile(m.path(to))
			if err != nil || !bytes.Equal(b, small) {
				t.Errorf("round %d after restart: %s: %v, %d bytes (big? %v)", i, to, err, len(b), bytes.Equal(b, big))
			}
		}
	}
	m.stop(t)
	for i := 0; i < 12; i++ {
		small := faultBytes(int64(i)+100, 77962)
		b, _, err := e.getObject(fmt.Sprintf("p/moved-%d.jpg", i))
		if err != nil || !bytes.Equal(b, small) {
			t.Errorf("bucket moved-%d: %v %d bytes", i, err, len(b))
		}
	}
	t.Logf("keys: %q", e.keys(t, "p/"))
}
