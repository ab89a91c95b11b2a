//go:build linux

package main

import "syscall"

// sysProcAttr makes a child die with the load tool, even when the tool is
// killed: a load run must never leave a server or a Redis behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
