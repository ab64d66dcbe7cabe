package mirror

import (
	"context"
	"net/http"

	"github.com/localds/localds/internal/httpclient"
)

// piece is one upstream response whose body is watched: a Read that
// waits longer than the stall timeout cancels the request, so the caller
// sees an error at once and can resume elsewhere. Only time spent waiting
// for the datastore counts; a slow client (the mirror blocked writing to
// it) does not.
type piece struct {
	resp   *http.Response
	body   *httpclient.StallReader
	cancel context.CancelFunc
}

// openPiece sends one request with its own cancellable context.
func (m *Mirror) openPiece(ctx context.Context, method, host, path string, hdr http.Header) (*piece, error) {
	pctx, cancel := context.WithCancel(ctx)
	resp, err := m.up.do(pctx, method, host, path, hdr)
	if err != nil {
		cancel()
		return nil, err
	}
	return &piece{resp: resp, body: httpclient.NewStallReader(resp.Body, m.opts.StallTimeout, cancel), cancel: cancel}, nil
}

func (p *piece) Read(b []byte) (int, error) { return p.body.Read(b) }

func (p *piece) Close() error {
	p.body.Stop()
	err := p.resp.Body.Close()
	p.cancel()
	return err
}
