package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	"github.com/containerd/log"

	"github.com/localds/localds/resolver"
)

// Bearer token auth through the mirror. A datastore that wants a token
// names a token service (realm) in its challenge, usually on itself:
// "Bearer realm=http://ds.local:5000/token". containerd fetches the token
// from the realm directly, and containerd cannot resolve .local names.
// So the mirror rewrites a .local realm to its own token endpoint,
//
//	<mirror>/v2/_localds/token?realm=<original realm>
//
// (under /v2/ because that is where the mirror is mounted; "_localds" is
// no valid repository name) and relays containerd's token requests, GET
// and OAuth POST, to the original realm over the bridge. Other realms are
// left as they are.
const tokenPath = "/v2/_localds/token"

const (
	maxTokenRequest  = 64 << 10
	maxTokenResponse = 1 << 20
)

// rewriteChallenges points .local Bearer realms in h at the mirror that
// received r.
func rewriteChallenges(h http.Header, r *http.Request) {
	vals := h.Values("Www-Authenticate")
	if len(vals) == 0 {
		return
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		out = append(out, rewriteChallenge(v, r))
	}
	h["Www-Authenticate"] = out
}

func rewriteChallenge(v string, r *http.Request) string {
	chs := auth.ParseAuthHeader(http.Header{"Www-Authenticate": {v}})
	if len(chs) != 1 || chs[0].Scheme != auth.BearerAuth {
		return v
	}
	realm := chs[0].Parameters["realm"]
	if _, err := localRealm(realm); err != nil {
		return v
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	params := map[string]string{}
	for k, val := range chs[0].Parameters {
		params[k] = val
	}
	params["realm"] = scheme + "://" + r.Host + tokenPath + "?" + url.Values{"realm": {realm}}.Encode()
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+strconv.Quote(params[k]))
	}
	return "Bearer " + strings.Join(parts, ",")
}

// localRealm accepts only http(s) URLs of .local hosts: the token
// endpoint is a door to datastores, not a general proxy.
func localRealm(realm string) (*url.URL, error) {
	u, err := url.Parse(realm)
	if err != nil {
		return nil, fmt.Errorf("realm %q: %w", realm, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.Host == "" {
		return nil, fmt.Errorf("realm %q: want an http(s) URL", realm)
	}
	if _, err := resolver.CanonicalHost(u.Host); err != nil {
		return nil, fmt.Errorf("realm %q: %w", realm, err)
	}
	return u, nil
}

// serveToken relays a token request to the .local realm it names.
func (m *Mirror) serveToken(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeError(w, r, http.StatusMethodNotAllowed, codeUnsupported, "token endpoint: GET or POST")
		return
	}
	q := r.URL.Query()
	realm := q.Get("realm")
	u, err := localRealm(realm)
	if err != nil {
		m.stats.rejected.Add(1)
		writeError(w, r, http.StatusBadRequest, codeUnsupported, "token endpoint: "+err.Error())
		return
	}
	q.Del("realm")
	uq := u.Query()
	for k, vs := range q {
		for _, v := range vs {
			uq.Add(k, v)
		}
	}
	u.RawQuery = uq.Encode()
	var body io.Reader
	if r.Method == http.MethodPost {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxTokenRequest+1))
		if err != nil || len(b) > maxTokenRequest {
			writeError(w, r, http.StatusBadRequest, codeUnsupported, "token endpoint: request body unreadable or too large")
			return
		}
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, u.String(), body)
	if err != nil {
		writeError(w, r, http.StatusBadRequest, codeUnsupported, "token endpoint: "+err.Error())
		return
	}
	for _, k := range []string{"Authorization", "Content-Type", "Accept"} {
		if v := r.Header.Values(k); len(v) > 0 {
			req.Header[k] = v
		}
	}
	req.Header.Set("User-Agent", userAgent)
	// A GET carries credentials in Authorization, an OAuth POST in its
	// form (password or refresh token).
	if u.Scheme == "http" && !m.opts.AllowPlainHTTPCredentials && (req.Header.Get("Authorization") != "" || r.Method == http.MethodPost) {
		m.stats.rejected.Add(1)
		writeError(w, r, http.StatusForbidden, codeDenied, fmt.Sprintf("token realm %s: %v", u.Host, errPlainCredentials))
		return
	}
	resp, err := m.up.client.Do(req)
	if err != nil {
		m.stats.upstreamErrors.Add(1)
		log.G(ctx).WithError(err).WithField("realm", u.Host).Error("token request to datastore failed")
		writeError(w, r, http.StatusBadGateway, codeUnavailable, fmt.Sprintf("token realm %s: %v", u.Host, err))
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil || len(b) > maxTokenResponse {
		m.stats.upstreamErrors.Add(1)
		writeError(w, r, http.StatusBadGateway, codeUnavailable, fmt.Sprintf("token realm %s: response unreadable or larger than %d bytes", u.Host, maxTokenResponse))
		return
	}
	h := w.Header()
	for _, k := range []string{"Content-Type", "Www-Authenticate", "Cache-Control"} {
		if v := resp.Header.Values(k); len(v) > 0 {
			h[k] = v
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(b)
}
