// Package httpclient holds the HTTP rules every client of a .local
// datastore shares: byte ranges (Range, Content-Range), cutting a body
// that stalls, TLS from a CA bundle with one trust rule, and one redirect
// policy. The mirror, the downloader and the remotes resolver use it, so a
// datastore meets the same client whichever of them is asking.
package httpclient
