//go:build !linux

package redistest

import "syscall"

// sysProcAttr: no parent-death signal outside Linux; t.Cleanup still kills.
func sysProcAttr() *syscall.SysProcAttr { return nil }
