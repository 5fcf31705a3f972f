package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// EnvVM set to "off" forbids booting VMs; tests that need one skip.
const EnvVM = "TABBY_VM"

// InVM reports whether this process runs inside a vmtest VM.
func InVM() bool { return os.Getenv(EnvInVM) == "1" }

// Check reports whether VMs can be used here and, if so, returns prepared
// assets. The error says why not.
func Check(ctx context.Context) (*Assets, error) {
	if os.Getenv(EnvVM) == "off" {
		return nil, errors.New(EnvVM + "=off")
	}
	if _, err := exec.LookPath(qemuBinary); err != nil {
		return nil, fmt.Errorf("%s not found (apt-get install qemu-system-x86)", qemuBinary)
	}
	a, err := Prepare(ctx)
	if err != nil {
		return nil, fmt.Errorf("vm assets not preparable: %w", err)
	}
	return a, nil
}

// Delegate returns false when the calling test's body should run in this
// process: we are in the VM, or this kernel has every feature. Otherwise it
// runs this very test inside a VM, streams its output to t.Log, fails t if
// the inner run failed (or ran no test), skips t if it skipped, and returns
// true. When no VM can be used it skips t, naming the missing features.
// Only top-level tests can delegate.
func Delegate(t *testing.T, features ...Feature) bool {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("vmtest.Delegate: only top-level tests can run in a VM, %s is a subtest", t.Name())
	}
	missing := missingFeatures(features)
	if InVM() {
		if len(missing) > 0 {
			t.Fatalf("vmtest: the VM's kernel lacks %s", strings.Join(missing, "; "))
		}
		return false
	}
	if len(missing) == 0 {
		return false
	}
	need := strings.Join(missing, "; ")
	if testing.Short() {
		t.Skipf("needs %s; no VM in -short mode; run: make test-vm", need)
	}
	a, err := Check(t.Context())
	if err != nil {
		t.Skipf("needs %s; cannot use a VM: %v; run: make test-vm", need, err)
	}
	t.Logf("vmtest: this kernel lacks %s; running %s in a VM", need, t.Name())
	runSelfInVM(t, a)
	return true
}

// missingFeatures probes each feature and describes the absent ones.
func missingFeatures(features []Feature) []string {
	var missing []string
	for _, f := range features {
		if err := f.Probe(); err != nil {
			missing = append(missing, fmt.Sprintf("%s (probe: %v)", f.Name, err))
		}
	}
	return missing
}

// runSelfInVM re-runs the current test binary, restricted to t, in a VM and
// mirrors its outcome on t.
func runSelfInVM(t *testing.T, a *Assets) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("vmtest: find test binary: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("vmtest: working directory: %v", err)
	}
	timeout := vmTimeout(t)
	argv := []string{exe,
		"-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$",
		"-test.v", "-test.count=1",
		"-test.timeout=" + (timeout - 20*time.Second).String(),
	}
	lw := &lineWriter{emit: func(line string) { t.Log("vm| " + line) }}
	opts := Options{Dir: wd, Env: tabbyEnv(), Stdout: lw, Timeout: timeout, Assets: a}
	res, err := Run(t.Context(), argv, opts)
	lw.flush()
	if err != nil {
		t.Fatalf("vmtest: run %s in the VM: %v", t.Name(), err)
	}
	t.Logf("vmtest: VM boot %s, total %s, exit status %d",
		res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond), res.ExitCode)
	switch o, reason := innerOutcome(t.Name(), res.Output, res.ExitCode); o {
	case outcomeFail:
		t.Fatalf("vmtest: %s failed in the VM: %s", t.Name(), reason)
	case outcomeSkip:
		t.Skipf("skipped in the VM: %s", reason)
	}
}

// vmTimeout is DefaultTimeout, shortened to end before the test's deadline.
func vmTimeout(t *testing.T) time.Duration {
	timeout := DefaultTimeout
	if d, ok := t.Deadline(); ok {
		if left := time.Until(d) - 5*time.Second; left < timeout {
			timeout = max(left, 30*time.Second)
		}
	}
	return timeout
}

// tabbyEnv passes the host's TABBY_* knobs on to the inner test.
func tabbyEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TABBY_") && !strings.HasPrefix(kv, EnvInVM+"=") {
			env = append(env, kv)
		}
	}
	return env
}

type outcome int

const (
	outcomePass outcome = iota
	outcomeFail
	outcomeSkip
)

// innerOutcome reads the -test.v output of a run of the single test name.
// For a skip the reason is the last log line before "--- SKIP".
func innerOutcome(name string, out []byte, exitCode int) (outcome, string) {
	var passed, failed, skipped bool
	var lastLog, skipReason string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "--- PASS: "+name+" "):
			passed = true
		case strings.HasPrefix(line, "--- FAIL: "+name+" "):
			failed = true
		case strings.HasPrefix(line, "--- SKIP: "+name+" "):
			skipped, skipReason = true, lastLog
		case strings.HasPrefix(line, "=== "):
			lastLog = ""
		case strings.HasPrefix(line, "    "):
			lastLog = strings.TrimSpace(line)
		}
	}
	switch {
	case failed:
		return outcomeFail, fmt.Sprintf("exit status %d", exitCode)
	case exitCode != 0:
		return outcomeFail, fmt.Sprintf("test binary exited with status %d", exitCode)
	case skipped:
		return outcomeSkip, skipReason
	case passed:
		return outcomePass, ""
	}
	return outcomeFail, "the test binary ran no test named " + name
}

// lineWriter hands complete lines to emit.
type lineWriter struct {
	buf  []byte
	emit func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.emit(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// flush emits a trailing partial line.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}
