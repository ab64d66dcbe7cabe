package pull

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// TestReferrersSpec: --referrers is for registry images only,
// --referrers-type implies it, and a datastore file's referrers = true
// asks for them (and is refused on an http datastore).
func TestReferrersSpec(t *testing.T) {
	spec, err := NewSpec(Request{Source: "ds.local:5000/app:1", ReferrerTypes: []string{"application/spdx+json"}})
	if err != nil || !spec.referrers || len(spec.referrerTypes) != 1 {
		t.Fatalf("--referrers-type: %+v, %v; want referrers on with the type", spec, err)
	}
	if _, err := NewSpec(Request{Source: "http://ds.local/app.oci.tar", Referrers: true}); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "archive") {
		t.Errorf("--referrers with an archive: %v, want an invalid-argument error naming the archive", err)
	}
	if _, err := NewSpec(Request{Source: "ds.local/app:1", ReferrerTypes: []string{"bad type"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("--referrers-type with a space: %v", err)
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "ds.toml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("[[datastore]]\nname = \"r\"\ntype = \"oci\"\nfqdn = \"ds.local:5000\"\nreferrers = true\n\n[[image]]\nname = \"app\"\ndatastore = \"r\"\npath = \"app:1\"\n")
	if spec, err := NewSpec(Request{Datastores: file, Image: "app"}); err != nil || !spec.referrers {
		t.Fatalf("referrers = true: %+v, %v", spec, err)
	}
	write("[[datastore]]\nname = \"h\"\ntype = \"http\"\nfqdn = \"ds.local\"\nreferrers = true\n")
	if _, err := NewSpec(Request{Datastores: file, Image: "app"}); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "referrers") {
		t.Errorf("referrers = true on an http datastore: %v", err)
	}
}
