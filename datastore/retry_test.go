package datastore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestRetryStopsOnSuccessAndOtherErrors(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		results  []error
		want     error
		attempts int
	}{
		{"success first", []error{nil}, nil, 1},
		{"success after conflicts", []error{ErrConflict, fmt.Errorf("x: %w", ErrConflict), nil}, nil, 3},
		{"other error at once", []error{boom}, boom, 1},
		{"not found is final", []error{ErrConflict, ErrNotFound}, ErrNotFound, 2},
	}
	for _, tt := range tests {
		calls := 0
		err := Retry(context.Background(), RetryPolicy{BaseDelay: time.Microsecond}, func(context.Context) error {
			calls++
			return tt.results[calls-1]
		})
		if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) || calls != tt.attempts {
			t.Errorf("%s: err %v after %d calls; want %v after %d", tt.name, err, calls, tt.want, tt.attempts)
		}
	}
}

func TestRetryGivesUpAfterMaxAttempts(t *testing.T) {
	calls := 0
	err := Retry(context.Background(), RetryPolicy{MaxAttempts: 4, BaseDelay: time.Millisecond}, func(context.Context) error {
		calls++
		return fmt.Errorf("update k: %w", ErrConflict)
	})
	if calls != 4 || !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "gave up after 4 attempts") {
		t.Fatalf("calls=%d err=%v", calls, err)
	}
	t.Log(err)
}

func TestRetryBoundedInTime(t *testing.T) {
	start := time.Now()
	calls := 0
	err := Retry(context.Background(), RetryPolicy{MaxAttempts: 1000, MaxElapsed: 100 * time.Millisecond,
		BaseDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond}, func(context.Context) error {
		calls++
		return ErrConflict
	})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrConflict) || elapsed > 150*time.Millisecond || calls < 3 {
		t.Fatalf("err=%v after %s and %d calls", err, elapsed, calls)
	}
	t.Logf("%v (%s)", err, elapsed)
}

func TestRetryHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := Retry(ctx, RetryPolicy{MaxAttempts: 1000, BaseDelay: 10 * time.Millisecond}, func(context.Context) error {
		return ErrConflict
	})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v", err)
	}
}

func TestRetryDelay(t *testing.T) {
	p := RetryPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}.withDefaults()
	for attempt, want := range map[int]time.Duration{1: 10, 2: 20, 3: 40, 4: 80, 5: 100, 60: 100} {
		want *= time.Millisecond
		for range 50 {
			if d := p.delay(attempt); d < want/2 || d > want {
				t.Fatalf("delay(%d) = %s, want in [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
}
