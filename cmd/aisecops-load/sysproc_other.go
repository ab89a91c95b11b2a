//go:build !linux

package main

import "syscall"

// sysProcAttr: no parent-death signal outside Linux; the tool stops its
// children itself. (Measurements need Linux's /proc anyway.)
func sysProcAttr() *syscall.SysProcAttr { return nil }
