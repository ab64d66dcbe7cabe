package migrate

import (
	"testing"

	"github.com/localds/localds/internal/durable"
)

func sameFS(a, b string) (bool, error) { return durable.SameFS(a, b) }

var _ = testing.Short
