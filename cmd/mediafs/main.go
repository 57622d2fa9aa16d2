// Command mediafs mounts an S3-compatible bucket as a local directory with
// a write-back cache. See README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
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

` + mountExamples + `
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
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

const mountExamples = `
Examples:
  export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  mediafs mount --endpoint http://127.0.0.1:9000 --cache-dir /var/cache/mediafs media /media
  mediafs mount --endpoint https://s3.eu-west-1.amazonaws.com --region eu-west-1 \
      --allow-other --uid 33 --gid 33 mybucket/uploads /srv/app/media
  mediafs status --cache-dir /var/cache/mediafs
  mediafs flush --cache-dir /var/cache/mediafs --timeout 5m
`

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// parseArgs parses a subcommand's flags. Asked for help, it prints the
// usage on stdout and reports help; a bad flag is a usageError with a
// short message instead of the whole usage.
func parseArgs(fset *flag.FlagSet, args []string) (help bool, err error) {
	fset.SetOutput(io.Discard)
	err = fset.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fset.SetOutput(os.Stdout)
		fset.Usage()
		return true, nil
	}
	fset.SetOutput(os.Stderr)
	if err != nil {
		return false, usageError{fmt.Errorf("%w (see mediafs %s --help)", err, fset.Name())}
	}
	return false, nil
}
