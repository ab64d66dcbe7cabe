package reponame

import (
	"strings"
	"testing"
)

func TestCheckRepository(t *testing.T) {
	for _, name := range []string{"app", "library/app", "a/b/c", "a.b", "a_b", "a__b", "a-b", "a---b", "0", "ds.local/app",
		strings.Repeat("a", 255)} {
		if err := CheckRepository(name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	for _, name := range []string{"", "App", "Library/app", "a//b", "/a", "a/", ".", "..", "a/../b", "a/./b", "a..b", "a___b", "-a", "a-",
		"_a", "a.", "a b", "a:1", "a@b", "host:5000/app", "a%2Fb", strings.Repeat("a", 256)} {
		if err := CheckRepository(name); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}

func TestCheckTag(t *testing.T) {
	for _, tag := range []string{"1", "latest", "v1.2.3-rc_1", "_x", "A", strings.Repeat("a", 128)} {
		if err := CheckTag(tag); err != nil {
			t.Errorf("%q refused: %v", tag, err)
		}
	}
	for _, tag := range []string{"", ".a", "-a", "a/b", "a:b", "a b", "a+b", strings.Repeat("a", 129)} {
		if err := CheckTag(tag); err == nil {
			t.Errorf("%q accepted", tag)
		}
	}
}
