package datastore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// listPageSize bounds one range response so a large prefix never becomes one huge message.
const listPageSize = 500

// Object is a decoded record with the etcd metadata a compare-and-swap needs.
type Object[T any] struct {
	Key   string
	Value T
	// Revision is the key's ModRevision: pass it to Update or Delete.
	Revision int64
	// Lease is the lease the key is attached to, or 0.
	Lease clientv3.LeaseID
}

// KV is a raw key-value pair as stored, for watch snapshots.
type KV struct {
	Key   string
	Value []byte
	// Revision is the key's ModRevision.
	Revision int64
	Lease    clientv3.LeaseID
}

// Decode unmarshals a stored value. Any failure, including an empty value or JSON null (which
// would otherwise decode silently into a zero record), is a *CorruptError naming key. Unknown
// fields are ignored so that a newer tabby can add fields while older agents still run.
func Decode[T any](key string, value []byte) (T, error) {
	var v T
	trimmed := bytes.TrimSpace(value)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return v, &CorruptError{Key: key, Err: fmt.Errorf("empty value %q", value)}
	}
	if err := json.Unmarshal(value, &v); err != nil {
		return v, &CorruptError{Key: key, Err: err}
	}
	return v, nil
}

// DecodeKV decodes a raw pair into an Object. On a *CorruptError the Object still carries Key,
// Revision and Lease (with a zero Value), so a repair can overwrite or delete it by CAS.
func DecodeKV[T any](kv KV) (Object[T], error) {
	obj := Object[T]{Key: kv.Key, Revision: kv.Revision, Lease: kv.Lease}
	v, err := Decode[T](kv.Key, kv.Value)
	if err != nil {
		return obj, err
	}
	obj.Value = v
	return obj, nil
}

func fromMVCC(kv *mvccpb.KeyValue) KV {
	return KV{Key: string(kv.Key), Value: kv.Value, Revision: kv.ModRevision, Lease: clientv3.LeaseID(kv.Lease)}
}

// Get reads and decodes one record: ErrNotFound if the key is absent, *CorruptError if its
// value does not decode (the returned Object then still has Key and Revision; see DecodeKV).
func Get[T any](ctx context.Context, c *Client, key string) (Object[T], error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	resp, err := c.cli.Get(ctx, key)
	if err != nil {
		return Object[T]{}, c.etcdError(OpGet, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return Object[T]{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	return DecodeKV[T](fromMVCC(resp.Kvs[0]))
}

// List reads every record under prefix at one revision, which it returns so a watch can
// continue from it.
//
// Contract: a value that does not decode does not sink the rest. List then returns every record
// that did decode, the revision, and an error joining one *CorruptError per bad key (OnlyCorrupt
// is true for it; CorruptKeys lists the keys). Any other failure returns nil, 0 and the error.
func List[T any](ctx context.Context, c *Client, prefix string) ([]Object[T], int64, error) {
	kvs, rev, err := c.listRaw(ctx, prefix)
	if err != nil {
		return nil, 0, err
	}
	objs := make([]Object[T], 0, len(kvs))
	var corrupt []error
	for _, kv := range kvs {
		obj, err := DecodeKV[T](kv)
		if err != nil {
			corrupt = append(corrupt, err)
			continue
		}
		objs = append(objs, obj)
	}
	return objs, rev, errors.Join(corrupt...)
}

// listRaw pages through prefix, pinning every page to the first page's revision so the result
// is one consistent snapshot.
func (c *Client) listRaw(ctx context.Context, prefix string) ([]KV, int64, error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	end := clientv3.GetPrefixRangeEnd(prefix)
	var (
		kvs  []KV
		rev  int64
		from = prefix
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, c.etcdError(OpList, "list", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			kvs = append(kvs, fromMVCC(kv))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return kvs, rev, nil
		}
		// The next page starts just after the last key: append the smallest byte.
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
