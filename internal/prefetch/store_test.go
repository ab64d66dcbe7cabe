package prefetch

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestRefDigest(t *testing.T) {
	d := digest.FromString("layer")
	for _, tc := range []struct {
		ref  string
		want digest.Digest
	}{
		{"default/12/layer-" + d.String(), d},
		{"default/3/docker.io/library/app:1@" + d.String(), d},
		{"layer-" + d.String(), d},
		{"default/4/manifest-sha256:abc", ""}, // not a digest
		{"default/5/upload-1234", ""},         // no digest at all
		{"default/6/layer-sha512:" + d.Encoded(), ""},
	} {
		got, ok := refDigest(tc.ref)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("refDigest(%q) = %q, %v; want %q", tc.ref, got, ok, tc.want)
		}
	}
}
