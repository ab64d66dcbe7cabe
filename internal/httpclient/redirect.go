package httpclient

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
)

// MaxRedirects bounds a redirect chain.
const MaxRedirects = 10

// CheckRedirect is the one redirect policy for datastores, for
// http.Client.CheckRedirect: follow only to the same host and port (an
// http -> https upgrade on default ports counts as the same), never from
// https down to http, at most MaxRedirects times. A datastore that sends
// a client elsewhere is misconfigured or hostile; either way the user
// should see it, and a client inside the node must not be turned into a
// proxy to any address a datastore names.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= MaxRedirects {
		return fmt.Errorf("stopped after %d redirects: %w", MaxRedirects, errdefs.ErrFailedPrecondition)
	}
	from, to := via[len(via)-1].URL, req.URL
	sameHost := strings.EqualFold(strings.TrimSuffix(from.Hostname(), "."), strings.TrimSuffix(to.Hostname(), "."))
	// http://h/ -> https://h/ changes the effective port but not the host.
	upgrade := from.Scheme == "http" && to.Scheme == "https" && from.Port() == "" && to.Port() == ""
	samePort := EffectivePort(from.Scheme, from.Port()) == EffectivePort(to.Scheme, to.Port()) || upgrade
	status := 0
	if req.Response != nil {
		status = req.Response.StatusCode
	}
	if !sameHost || !samePort {
		return fmt.Errorf("redirect %d from host %s to another host %s refused: %w",
			status, from.Host, to.Host, errdefs.ErrPermissionDenied)
	}
	if from.Scheme == "https" && to.Scheme != "https" {
		return fmt.Errorf("redirect from %s to %s refused: it leaves https: %w",
			from.Redacted(), to.Redacted(), errdefs.ErrPermissionDenied)
	}
	return nil
}

// EffectivePort is the port a URL with scheme and port (maybe empty)
// connects to.
func EffectivePort(scheme, port string) string {
	if port != "" {
		return port
	}
	if scheme == "https" {
		return "443"
	}
	return "80"
}
