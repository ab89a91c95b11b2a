//go:build linux

package redistest

import "syscall"

// sysProcAttr makes the server die with the test binary, even on SIGKILL.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
