package vault

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// inspect asks the kernel for dir's fscrypt policy
// (FS_IOC_GET_ENCRYPTION_POLICY_EX) and, for a v2 policy, its key's status
// (FS_IOC_GET_ENCRYPTION_KEY_STATUS). Opening a directory needs no key.
func inspect(dir string) (Status, error) {
	st := Status{Path: dir}
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	defer f.Close()
	st.Exists = true
	fd := int(f.Fd())

	arg := unix.FscryptGetPolicyExArg{Size: uint64(len(unix.FscryptGetPolicyExArg{}.Policy))}
	err = ioctl(fd, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg))
	switch {
	case errors.Is(err, unix.ENODATA):
		st.Reason = "no fscrypt policy on the directory"
		return st, nil
	case errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EOPNOTSUPP):
		st.Reason = "its file system does not support fscrypt encryption, or it is not enabled (ext4: mkfs/tune2fs -O encrypt)"
		return st, nil
	case errors.Is(err, unix.EOVERFLOW):
		return st, fmt.Errorf("an fscrypt policy newer than localds knows: %w", err)
	case err != nil:
		return st, fmt.Errorf("FS_IOC_GET_ENCRYPTION_POLICY_EX: %w", err)
	}
	st.Encrypted = true
	switch arg.Policy[0] {
	case unix.FSCRYPT_POLICY_V1:
		p := (*unix.FscryptPolicyV1)(unsafe.Pointer(&arg.Policy[0]))
		st.Policy, st.KeyID, st.Key = 1, hex.EncodeToString(p.Master_key_descriptor[:]), KeyUnknown
		return st, nil
	case unix.FSCRYPT_POLICY_V2:
		p := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
		st.Policy, st.KeyID = 2, hex.EncodeToString(p.Master_key_identifier[:])
		st.Key, err = keyStatus(fd, p.Master_key_identifier)
		return st, err
	default:
		st.Policy, st.Key = int(arg.Policy[0]), KeyUnknown
		return st, nil
	}
}

// keyStatus asks the file system's keyring about a v2 key.
func keyStatus(fd int, id [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]uint8) (Key, error) {
	var arg unix.FscryptGetKeyStatusArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(fd, unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Pointer(&arg)); err != nil {
		return KeyUnknown, fmt.Errorf("FS_IOC_GET_ENCRYPTION_KEY_STATUS: %w", err)
	}
	switch arg.Status {
	case unix.FSCRYPT_KEY_STATUS_PRESENT:
		return KeyPresent, nil
	case unix.FSCRYPT_KEY_STATUS_ABSENT:
		return KeyAbsent, nil
	case unix.FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED:
		return KeyIncompletelyRemoved, nil
	}
	return KeyUnknown, nil
}

func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg)); e != 0 {
		return e
	}
	return nil
}
