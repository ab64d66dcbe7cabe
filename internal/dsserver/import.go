package dsserver

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/localds/localds/internal/reponame"
)

// maxArchiveEntries bounds the work one archive can cause.
const maxArchiveEntries = 100000

// ImportDir loads every "*.tar" image archive in dir into the registry:
// OCI image layouts (`oci-layout` at the top, e.g. from `ctr export` or
// `docker save` since Docker 25) keep their digests; older `docker save`
// archives are read with ggcr's tarball package. Images are named by
// their io.containerd.image.name / org.opencontainers.image.ref.name
// annotation or RepoTags; a bare tag goes to the repository named after
// the file ("app.tar" -> "app"). Importing again is harmless.
func (r *Registry) ImportDir(ctx context.Context, dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithError(err).Warn("import: cannot read directory")
		}
		return
	}
	var loaded, failed int
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".tar") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		names, err := r.ImportArchive(ctx, p)
		if err != nil {
			failed++
			log.G(ctx).WithError(err).WithField("archive", p).Error("import: archive not loaded")
			continue
		}
		loaded++
		log.G(ctx).WithFields(log.Fields{"archive": p, "images": strings.Join(names, " ")}).Info("import: archive loaded")
	}
	log.G(ctx).WithFields(log.Fields{"dir": dir, "loaded": loaded, "failed": failed}).Info("import: done")
}

// ImportArchive loads one archive and returns the names it stored.
func (r *Registry) ImportArchive(ctx context.Context, archive string) ([]string, error) {
	members, err := tarMembers(archive)
	if err != nil {
		return nil, err
	}
	fallback := strings.ToLower(strings.TrimSuffix(filepath.Base(archive), ".tar"))
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(handlerTransport{http.HandlerFunc(r.serve)})}
	switch {
	case members["oci-layout"] && members["index.json"]:
		return r.importLayout(ctx, archive, fallback, opts)
	case members["manifest.json"]:
		return importDockerSave(archive, fallback, opts)
	}
	return nil, fmt.Errorf("%s is neither an OCI layout nor a docker save archive", archive)
}

func importDockerSave(archive, fallback string, opts []remote.Option) ([]string, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(archive) }
	mf, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("read manifest.json of %s: %w", archive, err)
	}
	var done []string
	for _, d := range mf {
		for _, rt := range d.RepoTags {
			src, err := name.NewTag(rt, name.WeakValidation)
			if err != nil {
				return done, fmt.Errorf("%s: tag %q: %w", archive, rt, err)
			}
			img, err := tarball.Image(opener, &src)
			if err != nil {
				return done, fmt.Errorf("%s: image %s: %w", archive, rt, err)
			}
			dst, err := importRef(rt, fallback)
			if err != nil {
				return done, err
			}
			if err := remote.Write(dst, img, opts...); err != nil {
				return done, fmt.Errorf("%s: store %s: %w", archive, dst, err)
			}
			done = append(done, dst.String())
		}
	}
	return done, nil
}

func (r *Registry) importLayout(ctx context.Context, archive, fallback string, opts []remote.Option) ([]string, error) {
	tmp, err := os.MkdirTemp(filepath.Join(r.store.root, "tmp"), "import-*")
	if err != nil {
		return nil, storageError("create import directory", err)
	}
	defer os.RemoveAll(tmp)
	if err := extractTar(ctx, archive, tmp); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(tmp)
	if err != nil {
		return nil, fmt.Errorf("read OCI layout of %s: %w", archive, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read index.json of %s: %w", archive, err)
	}
	var done []string
	for _, d := range im.Manifests {
		ref := d.Annotations["io.containerd.image.name"]
		if ref == "" {
			ref = d.Annotations["org.opencontainers.image.ref.name"]
		}
		dst, err := importRef(ref, fallback)
		if err != nil {
			return done, err
		}
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err == nil {
				err = remote.WriteIndex(dst, child, opts...)
			}
			if err != nil {
				return done, fmt.Errorf("%s: store index %s: %w", archive, dst, err)
			}
		case d.MediaType.IsImage():
			img, err := idx.Image(d.Digest)
			if err == nil {
				err = remote.Write(dst, img, opts...)
			}
			if err != nil {
				return done, fmt.Errorf("%s: store image %s: %w", archive, dst, err)
			}
		default:
			continue
		}
		done = append(done, dst.String())
	}
	return done, nil
}

// importRef turns an image name from an archive ("app:1",
// "docker.io/library/app:1", or a bare tag "1") into the tag to store,
// dropping the registry host: pulls name this datastore's host instead.
func importRef(ref, fallback string) (name.Tag, error) {
	ref, _, digested := strings.Cut(ref, "@")
	repo, tag := fallback, "latest"
	if ref != "" && !digested && !strings.ContainsAny(ref, "/:") {
		tag = ref
	} else if ref != "" {
		repo = ref
		if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
			repo, tag = ref[:i], ref[i+1:]
		}
		parts := strings.Split(repo, "/")
		if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
			if parts[0] == "docker.io" && len(parts) > 2 && parts[1] == "library" {
				parts = parts[1:]
			}
			parts = parts[1:]
		}
		repo = strings.ToLower(strings.Join(parts, "/"))
	}
	if reponame.CheckRepository(repo) != nil || reponame.CheckTag(tag) != nil {
		return name.Tag{}, fmt.Errorf("cannot name image %q (repository %q, tag %q)", ref, repo, tag)
	}
	return name.NewTag("localds.invalid/"+repo+":"+tag, name.StrictValidation)
}

// tarMembers lists the top-level regular files of an archive.
func tarMembers(archive string) (map[string]bool, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, fmt.Errorf("open archive: %w", err)
	}
	defer f.Close()
	out := map[string]bool{}
	tr := tar.NewReader(f)
	for i := 0; i < maxArchiveEntries; i++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read archive %s: %w", archive, err)
		}
		if h.Typeflag == tar.TypeReg {
			out[path.Clean(strings.TrimPrefix(h.Name, "./"))] = true
		}
	}
	return nil, fmt.Errorf("archive %s has more than %d entries", archive, maxArchiveEntries)
}

// extractTar unpacks the regular files and directories of an archive
// under dir through os.Root: no entry can land outside it.
func extractTar(ctx context.Context, archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return fmt.Errorf("open archive: %w", err)
	}
	defer f.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for i := 0; i < maxArchiveEntries; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive %s: %w", archive, err)
		}
		p := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if p == "." || strings.HasPrefix(p, "../") || p == ".." || path.IsAbs(p) {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(p, 0o755); err != nil {
				return fmt.Errorf("extract %s: %w", p, err)
			}
		case tar.TypeReg:
			if err := root.MkdirAll(path.Dir(p), 0o755); err != nil {
				return fmt.Errorf("extract %s: %w", p, err)
			}
			out, err := root.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return fmt.Errorf("extract %s: %w", p, err)
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return storageError("extract "+p, err)
			}
		}
	}
	return fmt.Errorf("archive %s has more than %d entries", archive, maxArchiveEntries)
}

// handlerTransport lets ggcr's remote package talk to the registry in
// process, without a socket.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil {
		req = req.Clone(req.Context())
		req.Body = http.NoBody
	}
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, req)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}
