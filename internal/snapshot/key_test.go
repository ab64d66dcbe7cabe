//go:build linux

package snapshot

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

const testUUID = "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10"

func TestParseVolumeKey(t *testing.T) {
	valid := []struct {
		key  string
		want Volume
	}{
		{testUUID + "#1", Volume{testUUID, 1}},
		{testUUID + "#0", Volume{testUUID, 0}},
		{testUUID + "#4294967295", Volume{testUUID, MaxGeneration}},
		{"00000000-0000-0000-0000-000000000000#7", Volume{"00000000-0000-0000-0000-000000000000", 7}},
		// containerd's metadata layer hands backends "<ns>/<n>/<key>".
		{"default/12/" + testUUID + "#2", Volume{testUUID, 2}},
		{"k8s.io/1/" + testUUID + "#3", Volume{testUUID, 3}},
	}
	for _, c := range valid {
		v, ok, err := ParseVolumeKey(c.key)
		if err != nil || !ok || v != c.want {
			t.Errorf("ParseVolumeKey(%q) = %+v, %v, %v; want %+v, true, nil", c.key, v, ok, err, c.want)
		}
		if ok && strings.ContainsAny(v.DirName(), "/\x00") {
			t.Errorf("DirName of %q = %q has a path separator", c.key, v.DirName())
		}
	}

	notVolumes := []string{
		"extract-1712345678901234567-Ab3d sha256:6d3a1c2f",
		"default/5/extract-1-x sha256:abc",
		"sha256:0123456789abcdef",
		"/tmp/snapshot-suite/work/preparing",
		testUUID, // no '#': an ordinary key
		"../../etc/passwd",
	}
	for _, k := range notVolumes {
		if _, ok, err := ParseVolumeKey(k); ok || err != nil {
			t.Errorf("ParseVolumeKey(%q) = %v, %v; want an ordinary key", k, ok, err)
		}
	}

	hostile := []string{
		"../x#1",
		testUUID + "#-1",
		testUUID + "#+1",
		testUUID + "#1/..",
		testUUID + "#1/../../x",
		"../" + testUUID + "#1",
		"/" + testUUID + "#1",
		strings.ToUpper(testUUID) + "#1",
		"6F1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1",
		testUUID + "#01",
		testUUID + "#00",
		testUUID + "#",
		"#1",
		"#",
		testUUID + "#1#2",
		testUUID + "#1 ",
		" " + testUUID + "#1",
		testUUID + "#1\x00",
		testUUID + "#1\n",
		testUUID + "#4294967296",                 // 2^32
		testUUID + "#99999999999999999999999999", // overlong generation
		testUUID + "0#1",                         // overlong UUID
		"6f1c8a2e3b7d4c1e9a550d2f4b8e9c10#1",     // no dashes
		"6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c1g#1", // not hex
		"{" + testUUID + "}#1",
		"urn:uuid:" + testUUID + "#1",
		testUUID + "#1.container",
		testUUID + "#٣",                                 // Arabic-Indic digit
		"default/" + testUUID + "#1",                    // half a containerd prefix
		"default/x/" + testUUID + "#1",                  // sequence not decimal
		"default/01/" + testUUID + "#1",                 // leading zero
		"../1/" + testUUID + "#1",                       // namespace not an identifier
		"default/1/../" + testUUID + "#1",               // extra segment
		"default/1/" + testUUID + "#1/..",               // trailing segment
		"default/1/" + strings.Repeat("a", 5000) + "#1", // overlong
		strings.Repeat("x", 10000) + "#1",
	}
	for _, k := range hostile {
		v, ok, err := ParseVolumeKey(k)
		if err == nil || ok {
			t.Errorf("ParseVolumeKey(%q) = %+v, %v, nil; want an invalid-argument error", k, v, ok)
			continue
		}
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("ParseVolumeKey(%q): %v is not errdefs.ErrInvalidArgument", k, err)
		}
		if len(err.Error()) > 400 {
			t.Errorf("ParseVolumeKey(%q): error message is %d bytes; untrusted input must be clipped", k[:20], len(err.Error()))
		}
	}
}

func TestPlacement(t *testing.T) {
	root := "/persist"
	l := layout{root: root}
	vol := testUUID + "#1"
	cases := []struct {
		name    string
		key     string
		kind    snapshots.Kind
		labels  map[string]string
		wantDir string // for id "7"
		wantErr error
	}{
		{"layer", "default/3/sha256:abc", snapshots.KindCommitted, nil, "/persist/vault/snapshots/snapshots/7", nil},
		{"unpack key", "default/4/extract-1-x sha256:abc", snapshots.KindActive, nil, "/persist/vault/snapshots/snapshots/7", nil},
		{"volume", vol, snapshots.KindActive, nil, "/persist/vault/volumes/" + vol + ".container", nil},
		{"volume via containerd", "default/9/" + vol, snapshots.KindActive, nil, "/persist/vault/volumes/" + vol + ".container", nil},
		{"volume vault explicit", vol, snapshots.KindActive, map[string]string{LabelNovault: "false"}, "/persist/vault/volumes/" + vol + ".container", nil},
		{"novault", vol, snapshots.KindActive, map[string]string{LabelNovault: "true"}, "/persist/novault/volumes/" + vol + ".container", nil},
		{"novault inherited", "default/9/" + vol, snapshots.KindActive, map[string]string{LabelNovaultInherited: "true"}, "/persist/novault/volumes/" + vol + ".container", nil},
		{"novault both", vol, snapshots.KindActive, map[string]string{LabelNovault: "true", LabelNovaultInherited: "true"}, "/persist/novault/volumes/" + vol + ".container", nil},
		{"novault disagree", vol, snapshots.KindActive, map[string]string{LabelNovault: "true", LabelNovaultInherited: "false"}, "", errdefs.ErrInvalidArgument},
		{"novault bad value", vol, snapshots.KindActive, map[string]string{LabelNovault: "yes"}, "", errdefs.ErrInvalidArgument},
		{"novault on a layer", "sha256:abc", snapshots.KindActive, map[string]string{LabelNovault: "true"}, "", errdefs.ErrInvalidArgument},
		{"volume as view", vol, snapshots.KindView, nil, "", errdefs.ErrInvalidArgument},
		{"volume as committed", vol, snapshots.KindCommitted, nil, "", errdefs.ErrInvalidArgument},
		{"hostile", "../x#1", snapshots.KindActive, nil, "", errdefs.ErrInvalidArgument},
		{"empty", "", snapshots.KindActive, nil, "", errdefs.ErrInvalidArgument},
		{"huge", strings.Repeat("k", maxKeyLen+1), snapshots.KindActive, nil, "", errdefs.ErrInvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pl, err := placementOf(c.key, c.kind, c.labels)
			if c.wantErr != nil {
				if err == nil || !errdefs.IsInvalidArgument(err) {
					t.Fatalf("placementOf = %+v, %v; want %v", pl, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			dir := l.dir("7", pl)
			if dir != c.wantDir {
				t.Fatalf("dir = %s, want %s", dir, c.wantDir)
			}
			if filepath.Clean(dir) != dir || !strings.HasPrefix(dir, root+"/") {
				t.Fatalf("dir %s escapes %s", dir, root)
			}
			if l.upper("7", pl) != filepath.Join(c.wantDir, "fs") || l.work("7", pl) != filepath.Join(c.wantDir, "work") {
				t.Fatalf("upper/work not inside %s", c.wantDir)
			}
		})
	}
	if got := VolumeDir(root, Volume{testUUID, 2}, true); got != "/persist/novault/volumes/"+testUUID+"#2.container" {
		t.Errorf("VolumeDir = %s", got)
	}
}
