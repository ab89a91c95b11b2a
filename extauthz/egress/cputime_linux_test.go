package egress

import (
	"runtime"
	"syscall"
	"time"
)

// threadCPU is the calling thread's CPU time. The shared benchmark machine is
// oversubscribed, so benchmarks report throughput per CPU-second of the
// benchmark thread as well as the wall-clock figure.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	if syscall.Getrusage(rusageThread, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func lockThread() func() { runtime.LockOSThread(); return runtime.UnlockOSThread }
