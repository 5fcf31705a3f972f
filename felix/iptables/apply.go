package iptables

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Result says what one Apply did.
type Result struct {
	// Read is set when the kernel was re-read (first apply, refresh, post-write
	// check, or after a failure).
	Read bool
	// Drift lists chains that differed from what the engine had written, found
	// by the re-read while nothing was pending: someone changed our rules.
	Drift []string
	// Chains lists the chains written, flushed or deleted; Lines the number of
	// lines fed to iptables-restore (0: nothing to do).
	Chains []string
	Lines  int
}

// Apply brings the table in line with the desired state: it re-reads the
// kernel when the cached view is stale or a check is due, computes the
// difference and writes it with one iptables-restore. On failure nothing is
// half-applied (restore is atomic per table) and the next Apply re-reads and
// tries again; the caller retries with backoff.
func (t *Table) Apply(ctx context.Context) (Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var res Result
	now := t.opts.Now()
	recheck := !t.recheckAt.IsZero() && !now.Before(t.recheckAt)
	refresh := !now.Before(t.nextRefresh)
	if recheck && t.dirty && t.kernel != nil && !refresh {
		// Changes wait: write them first (a wrong cached view only makes the
		// atomic restore fail, and the next Apply re-reads); the write
		// reschedules the post-write check anyway.
		recheck = false
	}
	if t.kernel == nil || recheck || refresh {
		if err := t.read(ctx); err != nil {
			return res, err
		}
		res.Read = true
	} else if !t.dirty {
		return res, nil
	}
	hooks := t.desiredHooks()
	if err := t.checkTargets(hooks); err != nil {
		return res, err
	}
	p := t.makePlan()
	if res.Read && !t.dirty && !p.empty() {
		res.Drift = p.touched()
		t.opts.Metrics.drift(t.name, len(res.Drift))
		t.log.Warn("iptables: our rules were changed behind our back; repairing", "chains", res.Drift)
	}
	if p.empty() {
		t.settle(recheck, res.Read)
		t.settled()
		return res, nil
	}
	input := p.restoreInput(t.name)
	res.Chains, res.Lines = p.touched(), bytes.Count(input, []byte("\n"))
	if err := t.restore(ctx, input); err != nil {
		t.kernel = nil
		return res, err
	}
	t.commit(p)
	t.settled()
	t.log.Debug("iptables: applied", "chains", len(res.Chains), "lines", res.Lines, "kept_referenced", p.keep)
	return res, nil
}

// settle records that kernel and desired state agree: after a read, the
// chains read back become the reference text; post-write checks back off.
func (t *Table) settle(afterRecheck, read bool) {
	t.dirty = false
	for name, dc := range t.chains {
		if !read {
			break
		}
		if _, ok := t.verified[name]; ok {
			continue
		}
		if kc := t.kernel.chains[name]; kc != nil && t.chainMatches(name, dc, kc) {
			seen := make([]string, len(kc.rules))
			for i, r := range kc.rules {
				seen[i] = r.spec
			}
			t.verified[name] = seen
		}
	}
	if afterRecheck {
		t.recheckStep = max(2*t.recheckStep, readCostFactor*t.lastRead)
		t.recheckAt = t.opts.Now().Add(t.recheckStep)
		if t.recheckStep > t.opts.RefreshInterval {
			t.recheckAt = time.Time{}
		}
	}
}

// commit updates the cached kernel view after a successful restore and
// schedules the post-write check.
func (t *Table) commit(p *plan) {
	for name, rules := range p.after {
		delete(t.verified, name)
		kc := t.kernel.chains[name]
		if kc == nil {
			kc = &kernelChain{builtin: !t.owned(name)}
			t.kernel.chains[name] = kc
			t.kernel.order = append(t.kernel.order, name)
		}
		kc.rules = rules
	}
	for _, name := range p.remove {
		delete(t.kernel.chains, name)
	}
	t.dirty = false
	// The first check comes no sooner than readCostFactor reads' time, so
	// that re-reading a big table (a second or more for 30,000 rules on
	// nft) takes at most a tenth of the time and rarely delays a change.
	t.recheckStep = max(t.opts.PostWriteInterval, readCostFactor*t.lastRead)
	t.recheckAt = t.opts.Now().Add(t.recheckStep)
	t.opts.Metrics.owned(t.name, t.kernel, t.owned)
}

// settled clears what the incremental planner tracks: kernel and desired state agree.
func (t *Table) settled() {
	clear(t.pending)
	t.hooksChanged, t.fullPlan = false, false
}

// read replaces the cached view with what iptables-save prints now.
func (t *Table) read(ctx context.Context) error {
	start := time.Now()
	out, err := t.run.Run(ctx, nil, t.be.Save, "-t", t.name)
	t.opts.Metrics.read(t.name, time.Since(start), err)
	if err != nil {
		t.kernel = nil
		return fmt.Errorf("read table %s: %w", t.name, err)
	}
	kt, err := parseSave(t.name, out)
	if err != nil {
		t.kernel = nil
		return fmt.Errorf("read table %s: %w", t.name, err)
	}
	t.kernel, t.fullPlan = kt, true
	t.lastRead = time.Since(start)
	t.nextRefresh = t.opts.Now().Add(t.opts.RefreshInterval)
	t.opts.Metrics.owned(t.name, kt, t.owned)
	return nil
}

// readCostFactor spaces post-write checks by this many times the last read.
const readCostFactor = 10

var errorLine = regexp.MustCompile(`Error occurred at line: (\d+)`)

// restore feeds the input to iptables-restore --noflush. A failure names the
// line iptables rejected.
func (t *Table) restore(ctx context.Context, input []byte) error {
	wait := "--wait=" + strconv.Itoa(int(t.opts.LockWait/time.Second))
	start := time.Now()
	_, err := t.run.Run(ctx, input, t.be.Restore, "--noflush", wait)
	t.opts.Metrics.restore(t.name, time.Since(start), bytes.Count(input, []byte("\n")), err)
	if err == nil {
		return nil
	}
	if m := errorLine.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		lines := bytes.Split(input, []byte("\n"))
		if n >= 1 && n <= len(lines) {
			return fmt.Errorf("write table %s (line %d: %q): %w", t.name, n, lines[n-1], err)
		}
	}
	return fmt.Errorf("write table %s: %w", t.name, err)
}
