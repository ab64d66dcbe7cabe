package main

import (
	"context"
	"net/http"

	"github.com/localds/localds/plugin"
)

// newMirror builds the /v2/ registry mirror. Until package plugin/mirror
// lands, nil tells plugin.Serve to answer 404 for /v2/, which makes
// containerd pull from the upstream itself.
func newMirror(ctx context.Context, d plugin.Deps) (http.Handler, error) {
	return nil, nil
}
