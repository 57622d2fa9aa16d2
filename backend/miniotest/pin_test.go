package miniotest

import (
	"os"
	"strings"
	"testing"
)

// The binary name looked for in the cache must be the one the install
// script writes, or a fresh machine's tests would not find the server the
// script just built.
func TestCachedBinaryNameMatchesInstallScript(t *testing.T) {
	b, err := os.ReadFile("../../scripts/install-minio.sh")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.Contains(s, `MINIO_PIN="${MEDIAFS_MINIO_PIN:-`+defaultPin+`}"`) {
		t.Errorf("scripts/install-minio.sh does not pin %s by default", defaultPin)
	}
	if !strings.Contains(s, `minio="$bin_dir/minio-$MINIO_PIN-flushfix"`) {
		t.Errorf("scripts/install-minio.sh no longer installs bin/minio-PIN-flushfix, which findBinary looks for (%s)", cachedBinary)
	}
}
