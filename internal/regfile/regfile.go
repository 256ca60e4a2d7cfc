// Package regfile opens input files, refusing anything but regular files: a
// FIFO would block forever, a device (/dev/zero) could be endless. kvtorch
// reads models, calibrations, presets and texts only through it (stdin, "-",
// is handled by callers).
package regfile

import (
	"fmt"
	"os"
	"syscall"
)

// Open opens path for reading when it is a regular file. It opens without
// blocking (O_NONBLOCK: a FIFO would otherwise wait for a writer) and checks
// the opened file, so the check and the read concern the same file.
func Open(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, Describe(st.Mode()))
	}
	return f, nil
}

// Check reports an error when path exists and is not a regular file.
func Check(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, Describe(st.Mode()))
	}
	return nil
}

// Describe names a file mode: "a folder", "a FIFO", "a device", ...
func Describe(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a folder"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeDevice != 0 || m&os.ModeCharDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file"
}
