package main

import (
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseMounts(t *testing.T) {
	got, err := parseMounts([]string{
		"type=bind,src=/srv/conf,dst=/etc/app,options=rbind:ro",
		"src=/srv/data,dst=/data",
		"type=tmpfs,source=tmpfs,destination=/tmp,options=size=1m",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []specs.Mount{
		{Type: "bind", Source: "/srv/conf", Destination: "/etc/app", Options: []string{"rbind", "ro"}},
		{Type: "bind", Source: "/srv/data", Destination: "/data", Options: []string{"rbind"}},
		{Type: "tmpfs", Source: "tmpfs", Destination: "/tmp", Options: []string{"size=1m"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseMounts:\n got %+v\nwant %+v", got, want)
	}
	for val, says := range map[string]string{
		"src=/a":                 "absolute",
		"src=/a,dst=rel":         "absolute",
		"dst=/a":                 "needs src",
		"src=/a,dst=/b,readonly": "key=value",
		"src=/a,dst=/b,mode=ro":  "unknown key",
	} {
		if _, err := parseMounts([]string{val}); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("--mount %q: %v; want an error saying %q", val, err, says)
		}
	}
}
