package dsserver

import (
	"maps"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/containerd/log"
)

// startupHold bounds how long a manifest request that finds nothing waits
// for the start-up import: under the 30 s a localds mirror (and most
// clients) wait for response headers.
const startupHold = 20 * time.Second

// startup is the state of the start-up import of DIR/.import: while it
// runs, the registry already serves, and a manifest it does not have yet
// may be in an archive still to be loaded. Such a request waits for the
// import (at most startupHold) instead of being answered 404, so a node
// that pulls while its datastore starts gets the image.
type startup struct {
	mu   sync.Mutex
	done chan struct{} // nil: no import running
	hold time.Duration // startupHold if 0 (tests shorten it)
}

// BeginImport marks the start-up import as running, before the registry
// serves; the returned func marks it over.
func (r *Registry) BeginImport() (end func()) {
	r.startup.mu.Lock()
	defer r.startup.mu.Unlock()
	done := make(chan struct{})
	r.startup.done = done
	var once sync.Once
	return func() {
		once.Do(func() {
			r.startup.mu.Lock()
			if r.startup.done == done {
				r.startup.done = nil
			}
			r.startup.mu.Unlock()
			close(done)
		})
	}
}

// importRunning returns the channel closed when the start-up import ends,
// or nil if none runs.
func (r *Registry) importRunning() <-chan struct{} {
	r.startup.mu.Lock()
	defer r.startup.mu.Unlock()
	return r.startup.done
}

// holdFor is how long a request may wait for the import.
func (r *Registry) holdFor() time.Duration {
	r.startup.mu.Lock()
	defer r.startup.mu.Unlock()
	if r.startup.hold > 0 {
		return r.startup.hold
	}
	return startupHold
}

// serveDuringImport answers a manifest read while the start-up import
// runs: from what is loaded if found, else once the import has ended (or
// startupHold passed, or the client gave up).
func (r *Registry) serveDuringImport(w http.ResponseWriter, req *http.Request, done <-chan struct{}) {
	// Answered from a recording (a manifest is small), as the importer's
	// handlerTransport does, so that a miss can still wait.
	rec := httptest.NewRecorder()
	r.serve(rec, req)
	if rec.Code != http.StatusNotFound {
		maps.Copy(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		return
	}
	log.G(req.Context()).WithField("path", req.URL.Path).Debug("registry: manifest not loaded yet; waiting for the start-up import")
	timer := time.NewTimer(r.holdFor())
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	case <-req.Context().Done():
		return
	}
	r.serve(w, req)
}
