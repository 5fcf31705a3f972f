package nodeagent

import (
	"context"
	"testing"
	"time"
)

func TestAfterWaitsForReady(t *testing.T) {
	ready := make(chan struct{})
	started := make(chan struct{})
	run := after(ready, func(context.Context) error { close(started); return nil })
	go func() { _ = run(context.Background()) }()
	select {
	case <-started:
		t.Fatal("ran before ready was closed")
	case <-time.After(50 * time.Millisecond):
	}
	close(ready)
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("did not run after ready was closed")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := after(make(chan struct{}), func(context.Context) error { t.Error("ran after ctx ended"); return nil })(ctx); err != nil {
		t.Errorf("cancelled while waiting: %v", err)
	}
}
