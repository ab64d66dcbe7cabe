package dsserver

import (
	"context"
	"net/http"
	"time"

	"github.com/containerd/log"
)

// adminPrefix is where the datastore's own endpoints live: a dot path,
// which the file server never serves, so no file of --dir can hide them.
//
//	GET  /.localds/metrics   Prometheus metrics
//	POST /.localds/gc        collect unreferenced blobs now
//
// Both answer loopback clients (the datastore's own container) and
// clients with the push token, nobody else.
const adminPrefix = "/.localds/"

func (r *Registry) serveAdmin(w http.ResponseWriter, req *http.Request) {
	if !r.auth.allowAdmin(req) {
		if len(r.auth.token) > 0 {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+authRealm+`"`)
		}
		http.Error(w, "the datastore's admin endpoints need the push token (localds serve --push-token-file) or a loopback client", http.StatusUnauthorized)
		return
	}
	switch req.URL.Path {
	case adminPrefix + "metrics":
		r.metrics.handler().ServeHTTP(w, req)
	case adminPrefix + "gc":
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "use POST to collect unreferenced blobs", http.StatusMethodNotAllowed)
			return
		}
		grace := gcGrace
		if q := req.URL.Query().Get("grace"); q != "" {
			d, err := time.ParseDuration(q)
			if err != nil || d < 0 {
				http.Error(w, "grace: want a duration such as 10m or 0s", http.StatusBadRequest)
				return
			}
			grace = d
		}
		res, err := r.collect(req.Context(), grace)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		writeJSON(w, "application/json", res)
	default:
		http.NotFound(w, req)
	}
}

// expireUploads ends idle upload sessions every tenth of the upload
// timeout (at least every second), until ctx is done.
func (r *Registry) expireUploads(ctx context.Context) {
	every := max(r.uploads.idle/10, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.uploads.expire()
			log.G(ctx).Trace("registry: idle uploads swept")
		}
	}
}
