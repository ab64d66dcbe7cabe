//go:build !linux

package vault

import (
	"errors"
	"os"
)

// inspect knows no fscrypt off Linux: an existing vault is reported as
// not encrypted.
func inspect(dir string) (Status, error) {
	st := Status{Path: dir}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return st, nil
	} else if err != nil {
		return st, err
	}
	st.Exists, st.Reason = true, "fscrypt is Linux only"
	return st, nil
}
