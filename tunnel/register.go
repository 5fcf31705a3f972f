package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabbynet/tabby/datastore"
)

// Registration keeps this node's record in etcd under a lease: while the
// agent lives the record stays; when the agent is gone for longer than the
// lease's TTL the record expires and every other node removes its routes.
// A graceful agent stop leaves the record (pods keep working during an
// upgrade); the lease lapses only if no agent comes back.
type Registration struct {
	store *datastore.Client
	ttl   time.Duration
	log   *slog.Logger

	mu     sync.Mutex
	record datastore.Node
	lease  clientv3.LeaseID
}

// Register writes the record under a fresh lease.
func Register(ctx context.Context, store *datastore.Client, rec datastore.Node, ttl time.Duration, log *slog.Logger) (*Registration, error) {
	r := &Registration{store: store, ttl: ttl, record: rec, log: log.With("component", "registration")}
	if err := r.register(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Registration) register(ctx context.Context) error {
	lease, err := r.store.Grant(ctx, r.ttl)
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	r.mu.Lock()
	r.lease = lease
	r.mu.Unlock()
	if err := r.write(ctx); err != nil {
		return err
	}
	r.log.Info("node registered", "node", r.record.Name, "address", r.record.IPv4Address, "ttl", r.ttl)
	return nil
}

// write stores the current record under the current lease, CAS.
func (r *Registration) write(ctx context.Context) error {
	r.mu.Lock()
	rec, lease := r.record, r.lease
	r.mu.Unlock()
	key := r.store.Keys().Node(rec.Name)
	err := datastore.Retry(ctx, datastore.DefaultRetryPolicy(), func(ctx context.Context) error {
		obj, err := datastore.Get[datastore.Node](ctx, r.store, key)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			_, err = r.store.Create(ctx, key, rec, datastore.WithLease(lease))
		case err == nil || datastore.OnlyCorrupt(err):
			_, err = r.store.Update(ctx, key, rec, obj.Revision, datastore.WithLease(lease))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("write node record %s: %w", key, err)
	}
	return nil
}

// SetTunnelAddr records the node's tunnel address.
func (r *Registration) SetTunnelAddr(ctx context.Context, addr string) error {
	r.mu.Lock()
	changed := r.record.IPv4TunnelAddr != addr
	r.record.IPv4TunnelAddr = addr
	r.mu.Unlock()
	if !changed {
		return nil
	}
	return r.write(ctx)
}

// KeepAlive renews the lease until ctx ends; when the lease is lost (etcd
// was unreachable past the TTL) it registers again.
func (r *Registration) KeepAlive(ctx context.Context) {
	for ctx.Err() == nil {
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		ch, err := r.store.Etcd().KeepAlive(ctx, lease)
		if err == nil {
			for range ch { // drain; the channel closes when the lease is gone or ctx ends
			}
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("node lease lost; registering again", "error", err)
		for ctx.Err() == nil {
			if err := r.register(ctx); err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// WriteStateFile writes a small file for the CNI plugin (node name, MTU)
// atomically: temp file, then rename, so a plugin never reads half of it.
func WriteStateFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	// On disk before the rename: after a power loss the file is either the
	// old one or the new one, never empty.
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
