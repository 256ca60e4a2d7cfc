// Package atomicfile writes files so that a failure or a crash never leaves a
// half-written file under the final name.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// ErrAborted is returned by writes after Abort.
var ErrAborted = errors.New("interrupted")

var (
	mu       sync.Mutex
	inFlight = map[string]bool{} // temporary files being written
	aborted  bool
)

// Abort removes the temporary files of writes in progress and makes every
// write from now on fail with ErrAborted: on SIGINT or SIGTERM, no
// temporary file stays behind and no output is half-written.
func Abort() {
	mu.Lock()
	defer mu.Unlock()
	aborted = true
	for name := range inFlight {
		os.Remove(name)
	}
}

// Resume lets writes succeed again after Abort, once the interrupted work
// has stopped (a program that handles one command line after another).
func Resume() {
	mu.Lock()
	defer mu.Unlock()
	aborted = false
}

func track(name string) error {
	mu.Lock()
	defer mu.Unlock()
	if aborted {
		return ErrAborted
	}
	inFlight[name] = true
	return nil
}

func untrack(name string) {
	mu.Lock()
	defer mu.Unlock()
	delete(inFlight, name)
}

// Write calls write with a temporary file in path's folder, then gives it
// the mode of the file it replaces (0644 for a new file), syncs it, renames
// it to path and syncs the folder. On any error the temporary file is
// removed and path is untouched. It refuses to replace something that is
// not a regular file (a folder, /dev/null, ...). A path that is a symbolic
// link is written through: the file it points to is replaced, the link
// stays.
func Write(path string, write func(w io.Writer) error) (err error) {
	path, mode, err := target(path)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	if err = track(tmp.Name()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	defer func() {
		untrack(tmp.Name())
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(mode); err != nil { // CreateTemp makes 0600 files
		return err
	}
	if err = write(tmp); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	mu.Lock() // no Abort between the check and the rename
	if aborted {
		mu.Unlock()
		return ErrAborted
	}
	err = os.Rename(tmp.Name(), path)
	mu.Unlock()
	if err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	return nil
}

// target resolves the file Write replaces: path itself, or the file a
// symbolic link at path points to; and the mode to give the new file.
func target(path string) (string, os.FileMode, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSymlink != 0 {
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			return "", 0, fmt.Errorf("%s: a symbolic link to nothing that can be written (%v)", path, err)
		}
		path = real
	}
	st, err := os.Stat(path)
	switch {
	case err == nil && !st.Mode().IsRegular():
		return "", 0, fmt.Errorf("%s: not a regular file; refusing to replace it", path)
	case err == nil:
		return path, st.Mode().Perm(), nil
	}
	return path, 0o644, nil
}

// CheckWritable reports whether Write could write path: its folder exists
// and takes new files, and path is not something other than a regular file.
// It writes nothing that stays.
func CheckWritable(path string) error {
	path, _, err := target(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("the folder %s does not take new files (%v)", filepath.Dir(path), err)
	}
	tmp.Close()
	return os.Remove(tmp.Name())
}
