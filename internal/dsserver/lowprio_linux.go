package dsserver

import "golang.org/x/sys/unix"

// lowerThreadPriority puts the calling OS thread at nice 19 and in the
// idle I/O class (ioprio_set, IOPRIO_CLASS_IDLE): background checks use
// only what serving leaves. Failures only mean normal priority.
func lowerThreadPriority() {
	tid := unix.Gettid()
	unix.Setpriority(unix.PRIO_PROCESS, tid, 19)
	const ioprioWhoProcess, ioprioClassIdle, ioprioClassShift = 1, 3, 13
	unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), ioprioClassIdle<<ioprioClassShift)
}
