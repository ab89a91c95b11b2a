// Package browsertest runs a real headless Chromium for tests that drive the
// dashboard as a person would (github.com/chromedp/chromedp). One browser
// serves a whole test binary; each test gets its own browser context
// (cookies and storage of its own). It is a test instrument: it imports no
// product code.
//
// The browser is the Debian package's `chromium` found on PATH. Without it
// a test skips on a developer's machine and fails in CI (CI set), so a
// machine that cannot run the browser tests never passes them silently.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"
)

var (
	once        sync.Once
	browserCtx  context.Context
	cancelAll   func()
	startErr    error
	chromiumBin string
)

// Chromium is the browser binary on PATH ("" when there is none).
func Chromium() string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// New returns a context for a fresh browser context in the shared browser,
// ended with the test. Every action the test runs in it is bounded by
// timeout.
func New(t testing.TB, timeout time.Duration) context.Context {
	t.Helper()
	once.Do(start)
	if chromiumBin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (apt-get install -y chromium): the browser tests cannot run")
		}
		t.Skip("chromium is not on PATH: browser tests skipped (they fail in CI)")
	}
	if startErr != nil {
		t.Fatalf("chromium: %v", startErr)
	}
	ctx, cancel := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		t.Fatalf("chromium: %v", err)
	}
	tctx, tcancel := context.WithTimeout(ctx, timeout)
	t.Cleanup(tcancel)
	return tctx
}

func start() {
	chromiumBin = Chromium()
	if chromiumBin == "" {
		return
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumBin), chromedp.NoSandbox, chromedp.WindowSize(1366, 900),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("lang", "en-GB"))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	if err := chromedp.Do(ctx); err != nil {
		startErr = err
	}
	browserCtx = ctx
	cancelAll = func() { cancel(); cancelAlloc() }
}

// Shutdown stops the shared browser; call it from TestMain after m.Run.
func Shutdown() {
	if cancelAll != nil {
		cancelAll()
	}
}

// Screenshot saves the whole page as docs/screenshots/NAME.png in the
// repository (the README shows these files).
func Screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dir, err := repoDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "docs", "screenshots", name+".png"), png, 0o644); err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
}

// AllowDownloads saves the test's downloads into dir.
func AllowDownloads(ctx context.Context, dir string) error {
	c := chromedp.FromContext(ctx)
	return chromedp.Do(ctx, func(ctx context.Context, _ *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, c.Browser, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dir, BrowserContextID: c.BrowserContextID})
		return chromedp.Void{}, err
	})
}

// WaitFile waits (within ctx) for a complete file in dir and returns its path.
func WaitFile(ctx context.Context, dir string) (string, error) {
	for {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if filepath.Ext(e.Name()) != ".crdownload" {
				if info, err := e.Info(); err == nil && info.Size() > 0 {
					return filepath.Join(dir, e.Name()), nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no download in %s: %w", dir, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// repoDir is the repository root: the nearest directory up with a go.mod.
func repoDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}
