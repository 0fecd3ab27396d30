// Package headless opens the live web page (tcp-upper-lab web) in headless
// Chromium for a test, through chromedp.
package headless

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tcp-upper/tcp-upper/internal/testenv"
)

// Open opens url in headless Chromium (Debian's chromium: apt-get install
// chromium; a missing one skips the test, or fails it under
// TCP_UPPER_REQUIRE_ROOT=1 as any missing tool) and waits until the page
// says it is connected (#status.up). It returns the browser's context,
// which ends after 90 s or with the test.
func Open(t testing.TB, url string) context.Context {
	t.Helper()
	testenv.RequireTool(t, "chromium")
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal(err)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU)...)
	ctx, cancelBrowser := chromedp.NewContext(actx)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() {
		cancel()
		cancelBrowser()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(`#status.up`))); err != nil {
		t.Fatalf("page %s did not connect: %v", url, err)
	}
	return ctx
}
