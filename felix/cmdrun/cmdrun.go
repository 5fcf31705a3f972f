// Package cmdrun runs the external programs felix drives (iptables-save,
// iptables-restore, ipset) behind one small seam, so that tests can run them
// inside a network namespace or replace them with a fake.
package cmdrun

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs argv[0] with the remaining arguments, feeding stdin (nil for
// none), and returns what it wrote to stdout. A failure names the command and
// carries its stderr.
type Runner interface {
	Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error)
}

// Exec runs programs as child processes of this one, in its network namespace.
type Exec struct{}

// Run implements Runner.
func (Exec) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	return Command(ctx, stdin, argv...)
}

// Command runs argv in the calling thread's network namespace (a child
// process inherits the namespace of the thread that forks it, which is what
// lets a test call it from inside netns.Do).
func Command(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &Error{Argv: argv, Err: err, Stderr: strings.TrimSpace(stderr.String())}
	}
	return stdout.Bytes(), nil
}

// Error is a command that failed to start or exited non-zero.
type Error struct {
	Argv   []string
	Err    error
	Stderr string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }
