package fs

import (
	"context"
	"errors"
	"os"
	"syscall"

	"github.com/mediafs/mediafs/backend"
)

// toErrno maps an error from the cache or backend to the errno the app
// sees. It is the only place that does.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	switch {
	case errors.As(err, &en):
		return en
	case errors.Is(err, os.ErrNotExist), errors.Is(err, backend.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, backend.ErrAccessDenied):
		return syscall.EACCES
	case errors.Is(err, backend.ErrConflict):
		return syscall.EAGAIN
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, backend.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return syscall.EIO
	case errors.Is(err, os.ErrExist):
		return syscall.EEXIST
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		if en, ok := pe.Err.(syscall.Errno); ok {
			return en
		}
	}
	return syscall.EIO
}
