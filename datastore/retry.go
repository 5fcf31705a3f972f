package datastore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds Retry. Zero fields take the values of DefaultRetryPolicy.
type RetryPolicy struct {
	// MaxAttempts counts calls of fn, the first included.
	MaxAttempts int
	// MaxElapsed is the time after which no new attempt starts.
	MaxElapsed time.Duration
	// BaseDelay is the wait after the first conflict; it doubles per attempt up to MaxDelay.
	BaseDelay time.Duration
	MaxDelay  time.Duration
}

// DefaultRetryPolicy suits a read-modify-write on a contended record such as an IPAM block:
// many quick attempts, each wait randomised so contenders spread out.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 20, MaxElapsed: 30 * time.Second, BaseDelay: 5 * time.Millisecond, MaxDelay: time.Second}
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.MaxElapsed <= 0 {
		p.MaxElapsed = d.MaxElapsed
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = d.BaseDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = d.MaxDelay
	}
	if p.MaxDelay < p.BaseDelay {
		p.MaxDelay = p.BaseDelay
	}
	return p
}

// delay is the jittered wait after the given failed attempt (1-based): uniformly random in
// [d/2, d] where d = BaseDelay·2^(attempt-1), capped at MaxDelay. Keeping half of d avoids the
// near-zero waits of full jitter that let a loser hammer etcd straight away.
func (p RetryPolicy) delay(attempt int) time.Duration {
	d := p.BaseDelay
	for i := 1; i < attempt && d < p.MaxDelay; i++ {
		d *= 2
	}
	d = min(d, p.MaxDelay)
	half := d / 2
	return half + rand.N(d-half+1)
}

// Retry calls fn until it returns anything but an ErrConflict, and returns that. After a
// conflict it waits (see RetryPolicy) and calls fn again, which must re-read what it changes.
// When attempts or time run out it gives up with an error that says how many attempts it made
// over how long and wraps the last conflict; if ctx ends first, the error wraps ctx's error and
// the last conflict.
func Retry(ctx context.Context, p RetryPolicy, fn func(context.Context) error) error {
	p = p.withDefaults()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !errors.Is(err, ErrConflict) {
			return err
		}
		wait := p.delay(attempt)
		elapsed := time.Since(start)
		if attempt >= p.MaxAttempts || elapsed+wait > p.MaxElapsed {
			return fmt.Errorf("gave up after %d attempts over %s: %w", attempt, elapsed.Round(time.Millisecond), err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("retry stopped after %d attempts over %s: %w (last: %w)",
				attempt, time.Since(start).Round(time.Millisecond), ctx.Err(), err)
		case <-t.C:
		}
	}
}
