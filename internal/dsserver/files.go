package dsserver

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxSumCache bounds the number of file checksums kept in memory.
const maxSumCache = 4096

// fileServer serves the regular files under a directory at their relative
// paths, with Range requests (http.ServeContent) and their sha256 in
// X-Checksum-Sha256, Digest (RFC 3230) and Repr-Digest (RFC 9530)
// headers. "<file>.sha256" is served too, from disk if the file exists,
// else generated ("<hex>  <name>", sha256sum's format). Paths with ".."
// are refused; names starting with "." (the registry's private .registry,
// the .import drop box, dotfiles) are neither served nor listed. All
// access goes through os.Root, so no symlink leads out of the directory.
type fileServer struct {
	root *os.Root
	sums sumCache
}

func newFileServer(dir string) (*fileServer, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open file tree %s: %w", dir, err)
	}
	return &fileServer{root: root, sums: sumCache{m: map[string]fileSum{}}}, nil
}

func (fsrv *fileServer) Close() error { return fsrv.root.Close() }

// cleanPath turns a URL path into a path relative to the root, refusing
// ".." and NUL outright and reporting hidden (dot) components.
func cleanPath(p string) (rel string, hidden bool, err error) {
	if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || strings.Contains(p, "\\") {
		return "", false, fmt.Errorf("bad path %q", p)
	}
	var parts []string
	for _, seg := range strings.Split(p[1:], "/") {
		switch {
		case seg == "" || seg == ".":
			continue
		case seg == "..":
			return "", false, fmt.Errorf("path %q leaves the served directory", p)
		case strings.HasPrefix(seg, "."):
			hidden = true
		}
		parts = append(parts, seg)
	}
	if len(parts) == 0 {
		return ".", hidden, nil
	}
	return strings.Join(parts, "/"), hidden, nil
}

func (fsrv *fileServer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rel, hidden, err := cleanPath(req.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if hidden {
		http.NotFound(w, req)
		return
	}
	f, err := fsrv.root.Open(rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(rel, ".sha256") {
			fsrv.serveSumFile(w, req, strings.TrimSuffix(rel, ".sha256"))
			return
		}
		fileError(w, req, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fileError(w, req, err)
		return
	}
	if fi.IsDir() {
		fsrv.serveDir(w, req, rel, f)
		return
	}
	if !fi.Mode().IsRegular() {
		http.NotFound(w, req)
		return
	}
	fsrv.serveFile(w, req, rel, f, fi)
}

func (fsrv *fileServer) serveFile(w http.ResponseWriter, req *http.Request, rel string, f *os.File, fi os.FileInfo) {
	sum, err := fsrv.sums.get(rel, f, fi)
	if err != nil {
		fileError(w, req, err)
		return
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		fileError(w, req, err)
		return
	}
	h := w.Header()
	h.Set("X-Checksum-Sha256", hex.EncodeToString(sum))
	h.Set("Digest", "sha-256="+base64.StdEncoding.EncodeToString(sum))
	h.Set("Repr-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(sum)+":")
	h.Set("ETag", `"sha256:`+hex.EncodeToString(sum)+`"`)
	ignoreForeignRange(req)
	http.ServeContent(w, req, fi.Name(), fi.ModTime(), f)
}

// serveSumFile generates "<file>.sha256" for a file without one on disk.
func (fsrv *fileServer) serveSumFile(w http.ResponseWriter, req *http.Request, rel string) {
	f, err := fsrv.root.Open(rel)
	if err != nil {
		fileError(w, req, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(w, req)
		return
	}
	sum, err := fsrv.sums.get(rel, f, fi)
	if err != nil {
		fileError(w, req, err)
		return
	}
	body := hex.EncodeToString(sum) + "  " + path.Base(rel) + "\n"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	ignoreForeignRange(req)
	http.ServeContent(w, req, path.Base(rel)+".sha256", fi.ModTime(), strings.NewReader(body))
}

// serveDir serves index.html if there is one, else a plain listing
// without hidden entries.
func (fsrv *fileServer) serveDir(w http.ResponseWriter, req *http.Request, rel string, d *os.File) {
	if !strings.HasSuffix(req.URL.Path, "/") {
		http.Redirect(w, req, path.Base(req.URL.Path)+"/", http.StatusMovedPermanently)
		return
	}
	if idx, err := fsrv.root.Open(path.Join(rel, "index.html")); err == nil {
		defer idx.Close()
		if fi, err := idx.Stat(); err == nil && fi.Mode().IsRegular() {
			fsrv.serveFile(w, req, path.Join(rel, "index.html"), idx, fi)
			return
		}
	}
	entries, err := d.ReadDir(10000)
	if err != nil && !errors.Is(err, io.EOF) {
		fileError(w, req, err)
		return
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var b strings.Builder
	b.WriteString("<!doctype html>\n<pre>\n")
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		if e.IsDir() {
			name += "/"
		}
		u := url.URL{Path: name}
		fmt.Fprintf(&b, "<a href=\"%s\">%s</a>\n", u.EscapedPath(), html.EscapeString(name))
	}
	b.WriteString("</pre>\n")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	http.ServeContent(w, req, "", time.Time{}, strings.NewReader(b.String()))
}

func fileError(w http.ResponseWriter, req *http.Request, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		http.NotFound(w, req)
	case errors.Is(err, fs.ErrPermission):
		http.Error(w, "forbidden", http.StatusForbidden)
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ELOOP), strings.Contains(err.Error(), "escapes"):
		http.NotFound(w, req)
	default:
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
}

// fileSum is a cached checksum, valid while the file is unchanged.
type fileSum struct {
	size  int64
	mtime time.Time
	ino   uint64
	sum   []byte
}

type sumCache struct {
	mu sync.Mutex
	m  map[string]fileSum
}

// get returns the sha256 of f, hashing it once per change of the file.
func (c *sumCache) get(rel string, f *os.File, fi os.FileInfo) ([]byte, error) {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	c.mu.Lock()
	e, ok := c.m[rel]
	c.mu.Unlock()
	if ok && e.size == fi.Size() && e.mtime.Equal(fi.ModTime()) && e.ino == ino {
		return e.sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size())); err != nil {
		return nil, fmt.Errorf("hash %s: %w", rel, err)
	}
	e = fileSum{size: fi.Size(), mtime: fi.ModTime(), ino: ino, sum: h.Sum(nil)}
	c.mu.Lock()
	if len(c.m) >= maxSumCache {
		clear(c.m)
	}
	c.m[rel] = e
	c.mu.Unlock()
	return e.sum, nil
}
