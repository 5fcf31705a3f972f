package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

type opKind int

const (
	opCreate opKind = iota + 1
	opUpdate
	opDelete
)

func (k opKind) String() string {
	switch k {
	case opCreate:
		return "create"
	case opUpdate:
		return "update"
	case opDelete:
		return "delete"
	}
	return "invalid op"
}

// Op is one compare-and-swap write for Apply. Build it with CreateOp, UpdateOp or DeleteOp.
type Op struct {
	kind     opKind
	key      string
	value    []byte
	revision int64
	lease    clientv3.LeaseID
	err      error
}

// Key is the key the op writes.
func (o Op) Key() string { return o.key }

// WriteOption adjusts a create or update.
type WriteOption func(*Op)

// WithLease attaches the key to a lease so it disappears when the lease ends.
// An update without WithLease keeps whatever lease the key had.
func WithLease(id clientv3.LeaseID) WriteOption {
	return func(o *Op) { o.lease = id }
}

// CreateOp writes value at key only if the key does not exist.
func CreateOp(key string, value any, opts ...WriteOption) Op {
	return newPut(opCreate, key, value, 0, opts)
}

// UpdateOp writes value at key only if the key is still at revision (its ModRevision when read).
func UpdateOp(key string, value any, revision int64, opts ...WriteOption) Op {
	return newPut(opUpdate, key, value, revision, opts)
}

// DeleteOp deletes key only if it is still at revision.
func DeleteOp(key string, revision int64) Op {
	return Op{kind: opDelete, key: key, revision: revision}
}

func newPut(kind opKind, key string, value any, revision int64, opts []WriteOption) Op {
	o := Op{kind: kind, key: key, revision: revision}
	for _, opt := range opts {
		opt(&o)
	}
	o.value, o.err = json.Marshal(value)
	if o.err != nil {
		o.err = fmt.Errorf("encode value: %w", o.err)
	}
	return o
}

func (o Op) check() error {
	switch {
	case o.err != nil:
		return o.err
	case o.kind == 0:
		return errors.New("zero Op")
	case o.key == "":
		return errors.New("empty key")
	case o.kind != opCreate && o.revision <= 0:
		return fmt.Errorf("revision must be positive, got %d (use CreateOp for new keys)", o.revision)
	}
	return nil
}

// Create writes value at key if the key does not exist, and returns the new revision.
// An existing key is ErrConflict.
func (c *Client) Create(ctx context.Context, key string, value any, opts ...WriteOption) (int64, error) {
	return c.Apply(ctx, CreateOp(key, value, opts...))
}

// Update replaces the value at key if the key is still at revision, and returns the new
// revision. A moved key is ErrConflict; a deleted one ErrNotFound. The key keeps its lease
// unless WithLease is given.
func (c *Client) Update(ctx context.Context, key string, value any, revision int64, opts ...WriteOption) (int64, error) {
	return c.Apply(ctx, UpdateOp(key, value, revision, opts...))
}

// Delete removes key if it is still at revision: ErrConflict if it moved, ErrNotFound if it is
// already gone.
func (c *Client) Delete(ctx context.Context, key string, revision int64) error {
	_, err := c.Apply(ctx, DeleteOp(key, revision))
	return err
}

// Apply performs every op in one etcd transaction: all of them, or none if any key is not as
// expected. It returns the revision of the write. The error names each op that failed its
// comparison and matches ErrConflict and/or ErrNotFound. A key may appear in one op only.
// Apply with no ops does nothing and returns 0.
func (c *Client) Apply(ctx context.Context, ops ...Op) (int64, error) {
	if len(ops) == 0 {
		return 0, nil
	}
	name := describe(ops)
	seen := make(map[string]bool, len(ops))
	cmps := make([]clientv3.Cmp, 0, len(ops))
	thens := make([]clientv3.Op, 0, len(ops))
	elses := make([]clientv3.Op, 0, len(ops))
	for _, o := range ops {
		if err := o.check(); err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		if seen[o.key] {
			return 0, fmt.Errorf("%s: key %s appears twice", name, o.key)
		}
		seen[o.key] = true
		cmp, then := o.txnParts()
		cmps = append(cmps, cmp)
		thens = append(thens, then)
		// On failure, read every key back (at the same revision, atomically) to say which lost.
		elses = append(elses, clientv3.OpGet(o.key, clientv3.WithKeysOnly()))
	}

	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	resp, err := c.cli.Txn(ctx).If(cmps...).Then(thens...).Else(elses...).Commit()
	if err != nil {
		return 0, c.etcdError(OpTxn, name, "", err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	var errs []error
	for i, o := range ops {
		var found int64
		if r := resp.Responses[i].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			found = r.Kvs[0].ModRevision
		}
		if err := o.mismatch(found); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		// Every key now matches, so a concurrent writer changed and restored it between our
		// comparison and the read-back; that is still a lost race.
		return 0, fmt.Errorf("%s: keys moved during the transaction: %w", name, ErrConflict)
	}
	return 0, errors.Join(errs...)
}

func (o Op) txnParts() (clientv3.Cmp, clientv3.Op) {
	var cmp clientv3.Cmp
	if o.kind == opCreate {
		cmp = clientv3.Compare(clientv3.CreateRevision(o.key), "=", 0)
	} else {
		cmp = clientv3.Compare(clientv3.ModRevision(o.key), "=", o.revision)
	}
	if o.kind == opDelete {
		return cmp, clientv3.OpDelete(o.key)
	}
	var putOpts []clientv3.OpOption
	switch {
	case o.lease != 0:
		putOpts = append(putOpts, clientv3.WithLease(o.lease))
	case o.kind == opUpdate:
		// A plain put would detach the key from its lease, and a node record would then
		// outlive its agent.
		putOpts = append(putOpts, clientv3.WithIgnoreLease())
	}
	return cmp, clientv3.OpPut(o.key, string(o.value), putOpts...)
}

// mismatch explains why o's comparison failed given the key's current ModRevision (0: absent),
// or returns nil if it would have held.
func (o Op) mismatch(found int64) error {
	switch {
	case o.kind == opCreate && found != 0:
		return fmt.Errorf("create %s: key exists at revision %d: %w", o.key, found, ErrConflict)
	case o.kind != opCreate && found == 0:
		return fmt.Errorf("%s %s: %w", o.kind, o.key, ErrNotFound)
	case o.kind != opCreate && found != o.revision:
		return fmt.Errorf("%s %s: expected revision %d, found %d: %w", o.kind, o.key, o.revision, found, ErrConflict)
	}
	return nil
}

// describe names a transaction for errors: "update /tabby/v1/blocks/x" or "apply 3 ops".
func describe(ops []Op) string {
	if len(ops) == 1 {
		return ops[0].kind.String() + " " + ops[0].key
	}
	return fmt.Sprintf("apply %d ops", len(ops))
}
