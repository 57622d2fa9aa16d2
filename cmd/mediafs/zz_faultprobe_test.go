package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestFaultProbeDirRenameChain(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	os.Mkdir(m.path("c"), 0o755)
	os.Mkdir(m.path("c/tree-0"), 0o755)
	want := map[string][]byte{}
	for i := 0; i < 50; i++ {
		k := fmt.Sprintf("leaf-%02d.txt", i)
		want[k] = faultBytes(int64(i), 100+i*200)
		writeFile(t, m.path("c/tree-0/"+k), want[k])
	}
	gen := 0
	for round := 0; round < 40; round++ {
		time.Sleep(time.Duration(round%7) * 60 * time.Millisecond)
		if err := os.Rename(m.path(fmt.Sprintf("c/tree-%d", gen)), m.path(fmt.Sprintf("c/tree-%d", gen+1))); err != nil {
			t.Fatalf("rename %d: %v", gen, err)
		}
		gen++
		if round%10 == 9 {
			m.kill9(t)
			m.restart(t)
		}
	}
	m.stop(t)
	keys := e.keys(t, "c/")
	t.Logf("%d keys", len(keys))
	for k, v := range want {
		b, _, err := e.getObject(fmt.Sprintf("c/tree-%d/%s", gen, k))
		if err != nil || !bytes.Equal(b, v) {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, fmt.Sprintf("c/tree-%d/", gen)) && k != "c/" {
			t.Errorf("extra %s", k)
		}
	}
	if strings.Contains(m.log(), "vanished") {
		t.Errorf("vanished in log")
	}
}
