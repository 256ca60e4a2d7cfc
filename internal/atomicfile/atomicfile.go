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

// Write calls write with a temporary file in path's folder, then makes it
// mode 0644, syncs it, renames it to path and syncs the folder. On any error
// the temporary file is removed and path is untouched. It refuses to replace
// something that is not a regular file (a folder, /dev/null, ...).
func Write(path string, write func(w io.Writer) error) (err error) {
	if st, serr := os.Stat(path); serr == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file; refusing to replace it", path)
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
	if err = tmp.Chmod(0o644); err != nil { // CreateTemp makes 0600 files
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
