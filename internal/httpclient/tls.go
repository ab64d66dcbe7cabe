package httpclient

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/errdefs"
)

// MaxCABundleSize bounds a CA bundle: a few certificates, not megabytes.
const MaxCABundleSize = 1 << 20

// ClientTLS is the TLS client configuration for datastores. The trust
// rule: a configured CA bundle (inline PEM or a file path) replaces the
// system roots, because a .local name never has a publicly issued
// certificate, so the public CAs would add nothing but attack surface;
// with no bundle ("") the system roots apply. ServerName is left empty on
// purpose: net/http takes it from the URL host, so the certificate is
// checked against the .local name whatever address the dialer picked.
func ClientTLS(caBundle string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caBundle == "" {
		return cfg, nil
	}
	pool, err := CAPool(caBundle)
	if err != nil {
		return nil, err
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// CAPool parses a CA bundle: inline PEM when it holds a PEM block, a file
// path otherwise. Every CERTIFICATE block must parse; other blocks (a key
// someone left in the file) are skipped, never trusted.
func CAPool(caBundle string) (*x509.CertPool, error) {
	data, src, err := readBundle(caBundle)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %v: %w", src, n+1, err, errdefs.ErrInvalidArgument)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate: %w", src, errdefs.ErrInvalidArgument)
	}
	return pool, nil
}

// readBundle returns the PEM text of caBundle and how to name it in
// errors, refusing a directory or anything over MaxCABundleSize.
func readBundle(caBundle string) ([]byte, string, error) {
	if strings.Contains(caBundle, "-----BEGIN") {
		if len(caBundle) > MaxCABundleSize {
			return nil, "", fmt.Errorf("inline CA bundle is over %d bytes: %w", MaxCABundleSize, errdefs.ErrInvalidArgument)
		}
		return []byte(caBundle), "inline CA bundle", nil
	}
	f, err := os.Open(caBundle)
	if err != nil {
		return nil, "", fmt.Errorf("CA bundle: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("CA bundle: %w", err)
	}
	if st.IsDir() || st.Size() > MaxCABundleSize {
		return nil, "", fmt.Errorf("CA bundle %s: not a PEM bundle (directory or over %d bytes): %w", caBundle, MaxCABundleSize, errdefs.ErrInvalidArgument)
	}
	// Read one byte past the limit: a file that grew after Stat is caught.
	data, err := io.ReadAll(io.LimitReader(f, MaxCABundleSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("CA bundle %s: %w", caBundle, err)
	}
	if len(data) > MaxCABundleSize {
		return nil, "", fmt.Errorf("CA bundle %s: over %d bytes: %w", caBundle, MaxCABundleSize, errdefs.ErrInvalidArgument)
	}
	return data, "CA bundle " + caBundle, nil
}
