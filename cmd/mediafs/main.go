// Command mediafs mounts an S3-compatible bucket as a local directory with
// a write-back cache. See README.md.
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `mediafs: an S3 bucket as a local directory, with a write-back cache

Usage:
  mediafs mount [flags] BUCKET[/PREFIX] MOUNTPOINT
  mediafs status [--cache-dir DIR]
  mediafs flush [--cache-dir DIR] [--timeout D]
  mediafs version

Examples:
  export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  mediafs mount --endpoint http://127.0.0.1:9000 --cache-dir /var/cache/mediafs media /media
  mediafs mount --endpoint https://s3.eu-west-1.amazonaws.com --region eu-west-1 \
      --allow-other --uid 33 --gid 33 mybucket/uploads /srv/app/media

Run "mediafs mount --help" for every flag. Credentials come from the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or
MEDIAFS_ACCESS_KEY_ID, MEDIAFS_SECRET_ACCESS_KEY) or --credentials-file,
never from the command line.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "mount":
		err = runMount(os.Args[2:])
	case "status":
		err = runStatus(os.Args[2:])
	case "flush":
		err = runFlush(os.Args[2:])
	case "version", "--version":
		fmt.Println("mediafs", version)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "mediafs: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mediafs:", err)
		os.Exit(1)
	}
}
