// Package dsclient is the client of a datastore: it reads EVE-style datastore configuration (TOML) and
// downloads image archives from HTTP/HTTPS datastores into the downloader
// area, resumably and verified against a sha256 before anything is handed
// back.
package dsclient

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/pelletier/go-toml/v2"

	"github.com/localds/localds/internal/httpclient"
	"github.com/localds/localds/internal/mdns"
	"github.com/localds/localds/internal/snapshot"
)

// Datastore types.
const (
	TypeHTTP  = "http"
	TypeHTTPS = "https"
	TypeOCI   = "oci"
)

// Config is a datastore file:
//
//	[[datastore]]
//	name = "local"
//	type = "https"
//	fqdn = "ubuntu-4321-http-server.local"
//	path = "images"
//	cert_chain = "/etc/localds/ca.pem"
//
//	[[image]]
//	name = "app"
//	datastore = "local"
//	path = "app.oci.tar"
//	sha256 = "..."
type Config struct {
	Datastores []Datastore `toml:"datastore"`
	Images     []Image     `toml:"image"`
}

// Datastore is where images come from. Username, Password and Token are
// secrets: they never appear in errors, logs or String().
type Datastore struct {
	Name      string `toml:"name"`
	Type      string `toml:"type"`       // "http", "https", "oci"
	FQDN      string `toml:"fqdn"`       // host or host:port; .local names are resolved over mDNS on the bridges
	Path      string `toml:"path"`       // URL path prefix (http/https) or repository prefix (oci)
	Username  string `toml:"username"`   // basic auth, with Password
	Password  string `toml:"password"`   // secret
	Token     string `toml:"token"`      // bearer token (secret), instead of username/password
	CertChain string `toml:"cert_chain"` // PEM: CA chain to trust for https/oci (inline PEM or a file path)
	// AllowPlainHTTPCredentials permits sending credentials over plain
	// http; without it a datastore with credentials refuses http.
	AllowPlainHTTPCredentials bool `toml:"allow_plain_http_credentials"`
	// TLS is "required" (HTTPS only: nothing is ever sent over plain
	// HTTP), "auto" (oci only: HTTPS, falling back to plain HTTP when the
	// registry does not speak TLS) or "off" (plain HTTP); empty means
	// required for https and for any datastore with a cert_chain, off for
	// http, auto for oci (see TLSMode).
	TLS string `toml:"tls"`
	// MaxSize is the largest archive (bytes) accepted from the datastore;
	// 0 for no limit. A larger one is refused as soon as its size shows
	// and nothing of it is kept.
	MaxSize int64 `toml:"max_size"`
	// Referrers (oci only) keeps every image's referrers (signatures,
	// SBOMs) too, as `localds pull --referrers` does.
	Referrers bool `toml:"referrers"`
}

// Values of Datastore.TLS.
const (
	TLSRequired = "required"
	TLSAuto     = "auto"
	TLSOff      = "off"
)

// TLSMode is the datastore's effective TLS setting: TLS if set, else
// required with a cert_chain or for https, off for http, auto for oci.
func (d Datastore) TLSMode() string {
	switch {
	case d.TLS != "":
		return d.TLS
	case d.CertChain != "" || d.Type == TypeHTTPS:
		return TLSRequired
	case d.Type == TypeHTTP:
		return TLSOff
	}
	return TLSAuto
}

// Image is an artifact on a datastore.
type Image struct {
	Name      string `toml:"name"`      // what `localds pull --image NAME` selects
	Datastore string `toml:"datastore"` // a Datastore.Name
	Path      string `toml:"path"`      // http/https: file path relative to Datastore.Path; oci: "repo:tag" or "repo@sha256:..." relative to Datastore.Path
	SHA256    string `toml:"sha256"`    // hex of the archive (http/https; required there) or of the manifest/index (oci; optional)
	Ref       string `toml:"ref"`       // containerd image name to create; default: Name
	Platform  string `toml:"platform"`  // optional, e.g. linux/arm64
	Volume    string `toml:"volume"`    // optional volume key <uuid>#<gen>
}

// maxConfigSize bounds what is read: a datastore file is a few KiB (a
// cert chain inline at most); anything bigger is the wrong file.
const maxConfigSize = 4 << 20

// Load reads, strictly parses and validates the datastore file at path.
// Every error names the file (and the entry or line at fault).
func Load(path string) (*Config, error) {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("datastore config %s does not exist: %w", path, errdefs.ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("datastore config: %w", err)
	case st.IsDir():
		return nil, fmt.Errorf("datastore config %s is a directory: %w", path, errdefs.ErrInvalidArgument)
	case st.Size() > maxConfigSize:
		return nil, fmt.Errorf("datastore config %s is %d bytes, more than a config can be: %w", path, st.Size(), errdefs.ErrInvalidArgument)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("datastore config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("datastore config %s: %w", path, err)
	}
	return c, nil
}

// Parse strictly decodes a datastore file (unknown keys are errors, so a
// typo never silently drops a setting), fills defaults (Image.Ref = Name,
// lower-case hex) and validates every entry.
func Parse(data []byte) (*Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var derr *toml.DecodeError
		var serr *toml.StrictMissingError
		switch {
		case errors.As(err, &serr):
			// Only key names and lines: serr.String() would quote the
			// whole line, and a misspelt "pasword" carries a secret.
			var keys []string
			for _, e := range serr.Errors {
				row, _ := e.Position()
				keys = append(keys, fmt.Sprintf("%s (line %d)", strings.Join(e.Key(), "."), row))
			}
			return nil, fmt.Errorf("unknown key %s (valid: datastore.{name, type, fqdn, path, username, password, token, cert_chain, allow_plain_http_credentials, tls, max_size, referrers}, image.{name, datastore, path, sha256, ref, platform, volume}): %w",
				strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
		case errors.As(err, &derr):
			row, col := derr.Position()
			return nil, fmt.Errorf("line %d, column %d: %s: %w", row, col, derr.Error(), errdefs.ErrInvalidArgument)
		default:
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// validate checks every entry and normalises images in place.
func (c *Config) validate() error {
	byName := make(map[string]Datastore, len(c.Datastores))
	for i, d := range c.Datastores {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("datastore #%d: %w", i+1, err)
		}
		if _, dup := byName[d.Name]; dup {
			return fmt.Errorf("datastore #%d: name %q is used twice: %w", i+1, d.Name, errdefs.ErrInvalidArgument)
		}
		byName[d.Name] = d
	}
	seen := make(map[string]bool, len(c.Images))
	for i := range c.Images {
		img := &c.Images[i]
		if img.Name == "" {
			return fmt.Errorf("image #%d: name is empty: %w", i+1, errdefs.ErrInvalidArgument)
		}
		if seen[img.Name] {
			return fmt.Errorf("image #%d: name %q is used twice: %w", i+1, img.Name, errdefs.ErrInvalidArgument)
		}
		seen[img.Name] = true
		d, ok := byName[img.Datastore]
		if !ok {
			return fmt.Errorf("image %q: datastore %q is not configured: %w", img.Name, img.Datastore, errdefs.ErrInvalidArgument)
		}
		if err := img.validate(d); err != nil {
			return fmt.Errorf("image %q: %w", img.Name, err)
		}
	}
	return nil
}

func (img *Image) validate(d Datastore) error {
	if img.Ref == "" {
		img.Ref = img.Name
	}
	img.SHA256 = strings.ToLower(strings.TrimPrefix(img.SHA256, "sha256:"))
	if img.SHA256 != "" {
		if err := CheckHex(img.SHA256); err != nil {
			return err
		}
	}
	if img.Path == "" {
		return fmt.Errorf("path is empty: %w", errdefs.ErrInvalidArgument)
	}
	switch d.Type {
	case TypeHTTP, TypeHTTPS:
		if img.SHA256 == "" {
			return fmt.Errorf("sha256 is required for an image on %s datastore %q: %w", d.Type, d.Name, errdefs.ErrInvalidArgument)
		}
		if _, err := d.FileURL(img.Path); err != nil {
			return err
		}
	case TypeOCI:
		if _, err := d.ImageRef(img.Path); err != nil {
			return err
		}
	}
	if strings.ContainsFunc(img.Ref, isSpaceOrControl) {
		return fmt.Errorf("ref %q has white space or control characters: %w", img.Ref, errdefs.ErrInvalidArgument)
	}
	if img.Platform != "" {
		if _, err := platforms.Parse(img.Platform); err != nil {
			return fmt.Errorf("platform %q: %v: %w", img.Platform, err, errdefs.ErrInvalidArgument)
		}
	}
	if img.Volume != "" {
		if _, err := snapshot.ParseVolume(img.Volume); err != nil {
			return fmt.Errorf("volume: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Lookup returns the image named image and its datastore.
func (c *Config) Lookup(image string) (Image, Datastore, error) {
	for _, img := range c.Images {
		if img.Name != image {
			continue
		}
		for _, d := range c.Datastores {
			if d.Name == img.Datastore {
				return img, d, nil
			}
		}
		return Image{}, Datastore{}, fmt.Errorf("image %q: datastore %q is not configured: %w", image, img.Datastore, errdefs.ErrNotFound)
	}
	names := make([]string, 0, len(c.Images))
	for _, img := range c.Images {
		names = append(names, img.Name)
	}
	return Image{}, Datastore{}, fmt.Errorf("image %q is not configured (configured: %s): %w", image, strings.Join(names, ", "), errdefs.ErrNotFound)
}

// CheckHex reports whether s is a sha256 in lower-case hex.
func CheckHex(s string) error {
	if len(s) != 64 {
		return fmt.Errorf("sha256 %q is not 64 hex digits: %w", clip(s), errdefs.ErrInvalidArgument)
	}
	if _, err := hex.DecodeString(s); err != nil || strings.ToLower(s) != s {
		return fmt.Errorf("sha256 %q is not lower-case hex: %w", clip(s), errdefs.ErrInvalidArgument)
	}
	return nil
}

// Validate checks a datastore entry: name, supported type, a bare host or
// host:port, a path that stays below its root, credentials that make sense
// for the type and a cert chain that parses.
func (d Datastore) Validate() error {
	if d.Name == "" {
		return fmt.Errorf("name is empty: %w", errdefs.ErrInvalidArgument)
	}
	if strings.ContainsFunc(d.Name, isSpaceOrControl) {
		return fmt.Errorf("name %q has white space or control characters: %w", d.Name, errdefs.ErrInvalidArgument)
	}
	switch d.Type {
	case TypeHTTP, TypeHTTPS, TypeOCI:
	case "":
		return fmt.Errorf("datastore %q: type is empty (want http, https or oci): %w", d.Name, errdefs.ErrInvalidArgument)
	default:
		return fmt.Errorf("datastore %q: unsupported type %q (want http, https or oci): %w", d.Name, d.Type, errdefs.ErrInvalidArgument)
	}
	if err := checkFQDN(d.FQDN); err != nil {
		return fmt.Errorf("datastore %q: %w", d.Name, err)
	}
	if hasDotDot(d.Path) || strings.ContainsAny(d.Path, "?#") || strings.ContainsFunc(d.Path, isSpaceOrControl) {
		return fmt.Errorf("datastore %q: path %q must be a plain path without '..', '?', '#' or white space: %w", d.Name, d.Path, errdefs.ErrInvalidArgument)
	}
	if d.Token != "" && (d.Username != "" || d.Password != "") {
		return fmt.Errorf("datastore %q: set either token or username/password, not both: %w", d.Name, errdefs.ErrInvalidArgument)
	}
	if d.Password != "" && d.Username == "" {
		return fmt.Errorf("datastore %q: password without username: %w", d.Name, errdefs.ErrInvalidArgument)
	}
	if d.Type == TypeHTTP && d.HasCredentials() && !d.AllowPlainHTTPCredentials {
		return fmt.Errorf("datastore %q: refusing credentials over plain http (set allow_plain_http_credentials = true to allow it, or use https): %w", d.Name, errdefs.ErrInvalidArgument)
	}
	if err := d.checkTLS(); err != nil {
		return err
	}
	if d.Referrers && d.Type != TypeOCI {
		return fmt.Errorf("datastore %q: referrers = true needs type oci (only registry images have referrers): %w", d.Name, errdefs.ErrInvalidArgument)
	}
	if d.MaxSize < 0 {
		return fmt.Errorf("datastore %q: max_size %d is negative (bytes; 0 for no limit): %w", d.Name, d.MaxSize, errdefs.ErrInvalidArgument)
	}
	if d.CertChain != "" {
		if d.Type == TypeHTTP {
			return fmt.Errorf("datastore %q: cert_chain is set but type is http (use https): %w", d.Name, errdefs.ErrInvalidArgument)
		}
		if _, err := httpclient.CAPool(d.CertChain); err != nil {
			return fmt.Errorf("datastore %q: cert_chain: %w", d.Name, err)
		}
	}
	return nil
}

// checkTLS refuses a tls setting the type or the cert_chain contradicts.
func (d Datastore) checkTLS() error {
	bad := func(why string) error {
		return fmt.Errorf("datastore %q: tls = %q %s: %w", d.Name, d.TLS, why, errdefs.ErrInvalidArgument)
	}
	switch d.TLS {
	case "":
		return nil
	case TLSRequired, TLSAuto, TLSOff:
	default:
		return bad(fmt.Sprintf("is not one of %q, %q, %q", TLSRequired, TLSAuto, TLSOff))
	}
	switch {
	case d.TLS == TLSOff && d.CertChain != "":
		return bad("with a cert_chain: the CA would never be used (a datastore with a CA is HTTPS only)")
	case d.Type == TypeHTTPS && d.TLS != TLSRequired:
		return bad("for type https: an https datastore is always TLS (use type http for plain HTTP)")
	case d.Type == TypeHTTP && d.TLS != TLSOff:
		return bad("for type http: the type says plain HTTP (use type https for TLS)")
	}
	return nil
}

// HasCredentials tells whether the datastore carries a username or token.
func (d Datastore) HasCredentials() bool { return d.Username != "" || d.Token != "" }

// String names the datastore for messages: name, type and fqdn, never a
// secret.
func (d Datastore) String() string {
	return fmt.Sprintf("datastore %q (%s://%s)", d.Name, d.Type, d.FQDN)
}

// FileURL is the URL of rel on an http/https datastore:
// scheme://fqdn/path/rel. rel may not climb out of the datastore's path.
func (d Datastore) FileURL(rel string) (*url.URL, error) {
	if d.Type != TypeHTTP && d.Type != TypeHTTPS {
		return nil, fmt.Errorf("%s: files need an http or https datastore: %w", d, errdefs.ErrInvalidArgument)
	}
	if rel == "" || hasDotDot(rel) || strings.ContainsFunc(rel, isControl) {
		return nil, fmt.Errorf("%s: file path %q must be a relative path without '..': %w", d, rel, errdefs.ErrInvalidArgument)
	}
	return &url.URL{Scheme: d.Type, Host: d.FQDN, Path: path.Join("/", d.Path, rel)}, nil
}

// ImageRef is the full reference of an image on an oci datastore:
// fqdn/path/rel, rel being "repo:tag" or "repo@sha256:...".
func (d Datastore) ImageRef(rel string) (string, error) {
	if d.Type != TypeOCI {
		return "", fmt.Errorf("%s: image references need an oci datastore: %w", d, errdefs.ErrInvalidArgument)
	}
	if rel == "" || hasDotDot(rel) || strings.HasPrefix(rel, "/") {
		return "", fmt.Errorf("%s: image path %q must be a relative repository reference: %w", d, rel, errdefs.ErrInvalidArgument)
	}
	if last := rel[strings.LastIndex(rel, "/")+1:]; !strings.ContainsAny(last, ":@") {
		return "", fmt.Errorf("%s: image path %q needs a tag or digest (repo:tag or repo@sha256:...): %w", d, rel, errdefs.ErrInvalidArgument)
	}
	full := d.FQDN + "/" + strings.TrimPrefix(path.Join(d.Path, rel), "/")
	// Strict: a tag or digest must be explicit, names lower-case, digests
	// well-formed (containerd's own parser lets all of these through).
	r, err := name.ParseReference(full, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("%s: image path %q: %v: %w", d, rel, err, errdefs.ErrInvalidArgument)
	}
	if r.Context().RegistryStr() != d.FQDN {
		// "ds/app:1" reads as a Docker Hub repository: a registry host
		// needs a dot or a port to be one.
		return "", fmt.Errorf("%s: fqdn %q is not usable as a registry host (add a domain or a port): %w", d, d.FQDN, errdefs.ErrInvalidArgument)
	}
	sep := ":"
	if _, ok := r.(name.Digest); ok {
		sep = "@"
	}
	return d.FQDN + "/" + r.Context().RepositoryStr() + sep + r.Identifier(), nil
}

// TLSConfig is the client TLS configuration for the datastore, by
// httpclient's trust rule: CertChain (inline PEM or a file path) replaces
// the system roots, which apply only when it is empty. ServerName is left
// to net/http, which takes it from the URL host, so a certificate for the
// .local name verifies even though the dial goes to an IP.
func (d Datastore) TLSConfig() (*tls.Config, error) {
	cfg, err := httpclient.ClientTLS(d.CertChain)
	if err != nil {
		return nil, fmt.Errorf("%s: cert_chain: %w", d, err)
	}
	return cfg, nil
}

// checkFQDN accepts "host" or "host:port" (IPv6 in brackets), nothing with
// a scheme, path, user info or white space.
func checkFQDN(fqdn string) error {
	if fqdn == "" {
		return fmt.Errorf("fqdn is empty: %w", errdefs.ErrInvalidArgument)
	}
	bad := func(why string) error {
		return fmt.Errorf("fqdn %q %s (want host or host:port): %w", clip(fqdn), why, errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(fqdn, "/@?#") || strings.ContainsFunc(fqdn, isSpaceOrControl) {
		return bad("has a scheme, path or user info")
	}
	host := fqdn
	if h, p, err := net.SplitHostPort(fqdn); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("has a bad port")
		}
		host = h
	} else if strings.Count(fqdn, ":") == 1 {
		return bad("has a bad port")
	}
	if host == "" {
		return bad("has no host")
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	if strings.Contains(host, ":") {
		return bad("is an IPv6 address without brackets")
	}
	// The one host-name rule, .local or not: RFC 1123 labels, any case,
	// no underscore.
	if err := mdns.CheckHostname(host); err != nil {
		return bad(fmt.Sprintf("is not a valid host name: %v", err))
	}
	return nil
}

// hasDotDot tells whether any slash-separated element of p is "..".
// Backslashes count as separators too, for servers that treat them so.
func hasDotDot(p string) bool {
	for _, el := range strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == '\\' }) {
		if el == ".." {
			return true
		}
	}
	return false
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func isSpaceOrControl(r rune) bool { return r == ' ' || r == '\t' || isControl(r) }

// clip shortens user input quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
