package dsserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/localds/localds/internal/reponame"
)

// resolve turns a tag or digest of repo into the stored manifest. ok is
// false when there is none (the answer has been written).
func (m *manifestStore) resolve(w http.ResponseWriter, req *http.Request, repo, ref string) (stored, bool) {
	var h v1.Hash
	if strings.Contains(ref, ":") {
		var err error
		if h, err = parseDigest(ref); err != nil {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return stored{}, false
		}
	} else {
		if reponame.CheckTag(ref) != nil {
			writeRegError(w, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", ref))
			return stored{}, false
		}
		b, err := os.ReadFile(m.tagPath(repo, ref))
		if err == nil {
			h, err = parseDigest(strings.TrimSpace(string(b)))
		}
		if err != nil {
			m.notFound(w, repo, "tag "+ref)
			return stored{}, false
		}
	}
	s, err := m.readRevision(repo, h.Hex)
	if err != nil || s.h != h {
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errNotFound) {
			log.G(req.Context()).WithError(err).WithField("repo", repo).Warn("registry: stored manifest unreadable")
		}
		m.notFound(w, repo, "manifest "+h.String())
		return stored{}, false
	}
	return s, true
}

// notFound answers 404: NAME_UNKNOWN for a repository never pushed to,
// MANIFEST_UNKNOWN otherwise.
func (m *manifestStore) notFound(w http.ResponseWriter, repo, what string) {
	if _, err := os.Stat(m.dir(repo)); err != nil {
		writeRegError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository "+repo+" not known")
		return
	}
	writeRegError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", what+" not in "+repo)
}

// get handles GET and HEAD /v2/<repo>/manifests/<ref>.
func (m *manifestStore) get(w http.ResponseWriter, req *http.Request, repo, ref string) {
	s, ok := m.resolve(w, req, repo, ref)
	if !ok {
		return
	}
	if msg := m.incomplete(repo, s, 2); msg != "" {
		// A blob it needs was lost (quarantined): answering "unknown"
		// makes a client's next push of the image send it all again,
		// where "present" would make it skip the push.
		log.G(req.Context()).WithField("repo", repo).Warn("registry: " + msg)
		writeRegError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", msg)
		return
	}
	w.Header().Set("Content-Type", s.mt)
	w.Header().Set("Docker-Content-Digest", s.h.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(s.body)))
	w.Header().Set("ETag", `"`+s.h.String()+`"`)
	w.WriteHeader(http.StatusOK)
	if req.Method != http.MethodHead {
		w.Write(s.body)
	}
}

// tags handles GET /v2/<repo>/tags/list, with the spec's n and last.
func (m *manifestStore) tags(w http.ResponseWriter, req *http.Request, repo string) {
	if _, err := os.Stat(m.dir(repo)); err != nil {
		writeRegError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository "+repo+" not known")
		return
	}
	entries, _ := os.ReadDir(filepath.Join(m.dir(repo), "tags"))
	tags := []string{}
	for _, e := range entries {
		if reponame.CheckTag(e.Name()) == nil {
			tags = append(tags, e.Name())
		}
	}
	page, next, err := paginate(tags, req.URL.Query())
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", err.Error())
		return
	}
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?n=%d&last=%s>; rel="next"`, repo, len(page), url.QueryEscape(next)))
	}
	writeJSON(w, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{repo, page})
}

// catalog handles GET /v2/_catalog, with the spec's n and last.
func (m *manifestStore) catalog(w http.ResponseWriter, req *http.Request) {
	repos := []string{}
	filepath.WalkDir(m.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || d.Name() != "_manifests" {
			return nil
		}
		rel, _ := filepath.Rel(m.root, filepath.Dir(p))
		if repo := filepath.ToSlash(rel); reponame.CheckRepository(repo) == nil {
			repos = append(repos, repo)
		}
		return fs.SkipDir
	})
	page, next, err := paginate(repos, req.URL.Query())
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", err.Error())
		return
	}
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/_catalog?n=%d&last=%s>; rel="next"`, len(page), url.QueryEscape(next)))
	}
	writeJSON(w, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{page})
}

// paginate sorts names and returns those after q's "last", at most q's
// "n" of them, and the last one returned when more follow.
func paginate(names []string, q url.Values) (page []string, next string, err error) {
	sort.Strings(names)
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(names, last)
		if i < len(names) && names[i] == last {
			i++
		}
		names = names[i:]
	}
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			return nil, "", fmt.Errorf("invalid n %q: want a count", ns)
		}
		if n < len(names) {
			names = names[:n]
			if n > 0 {
				next = names[n-1]
			}
		}
	}
	return names, next, nil
}

// writeJSON writes v as the body with Content-Type ct.
func writeJSON(w http.ResponseWriter, ct string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeRegError(w, http.StatusInternalServerError, "UNKNOWN", "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// incomplete says what a stored manifest lacks of what its push had to
// bring first (checkRefs' rules), looking depth levels of child
// manifests deep; "" when nothing.
func (m *manifestStore) incomplete(repo string, s stored, depth int) string {
	var mf manifestFields
	if json.Unmarshal(s.body, &mf) != nil {
		return ""
	}
	if code, msg := m.checkRefs(repo, types.MediaType(s.mt), mf); code != "" {
		return fmt.Sprintf("manifest %s is incomplete on this datastore (%s): push it again", s.h, msg)
	}
	if !types.MediaType(s.mt).IsIndex() || depth == 0 {
		return ""
	}
	for _, d := range mf.Manifests {
		if !d.MediaType.IsImage() && !d.MediaType.IsIndex() {
			continue
		}
		child, err := m.readRevision(repo, d.Digest.Hex)
		if err != nil {
			return fmt.Sprintf("manifest %s is incomplete on this datastore (child %s unreadable): push it again", s.h, d.Digest)
		}
		if msg := m.incomplete(repo, child, depth-1); msg != "" {
			return fmt.Sprintf("manifest %s is incomplete on this datastore (child %s): push it again", s.h, d.Digest)
		}
	}
	return ""
}
