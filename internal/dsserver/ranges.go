package dsserver

import (
	"net/http"
	"strings"
)

// ignoreForeignRange drops a Range header whose unit is not bytes before
// http.ServeContent sees it: RFC 9110 §14.2 says a server ignores a range
// unit it does not understand (and answers 200 with the whole content),
// where ServeContent would answer 416.
func ignoreForeignRange(req *http.Request) {
	r := req.Header.Get("Range")
	if r == "" {
		return
	}
	unit, spec, _ := strings.Cut(r, "=")
	switch {
	case !strings.EqualFold(strings.TrimSpace(unit), "bytes"):
		req.Header.Del("Range")
	case unit != "bytes":
		// Unit names are case-insensitive; ServeContent knows only "bytes=".
		req.Header.Set("Range", "bytes="+spec)
	}
}
