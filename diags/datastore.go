package diags

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tabbynet/tabby/datastore"
)

// Record is one stored record as the tarball keeps it: the value exactly as stored (JSON),
// with the key, revision and lease a reader needs to line it up with etcd.
type Record struct {
	Key      string          `json:"key"`
	Revision int64           `json:"revision"`
	Lease    int64           `json:"lease,omitempty"`
	Value    json.RawMessage `json:"value"`
}

// Records reads every kind of tabby record (pools, blocks, affinities, handles, nodes,
// workload endpoints) into datastore/<kind>.json, each a JSON array of Record. It pings etcd
// first, so an unreachable etcd costs one timeout and one line in errors.txt, not six.
func Records(ds *datastore.Client) Collector {
	return Func("datastore records", func(ctx context.Context) ([]File, error) {
		if err := ds.Ping(ctx); err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
		k := ds.Keys()
		kinds := []struct {
			kind   datastore.Kind
			prefix string
		}{
			{datastore.KindIPPool, k.IPPools()},
			{datastore.KindBlock, k.Blocks()},
			{datastore.KindAffinity, k.Affinities()},
			{datastore.KindHandle, k.Handles()},
			{datastore.KindNode, k.Nodes()},
			{datastore.KindWorkloadEndpoint, k.WorkloadEndpoints()},
		}
		var files []File
		var errs []error
		for _, kd := range kinds {
			f, err := listKind(ctx, ds, string(kd.kind), kd.prefix)
			if f != nil {
				files = append(files, *f)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
		return files, errors.Join(errs...)
	})
}

// listKind lists one prefix. Corrupt values are reported and the rest kept (List's contract).
func listKind(ctx context.Context, ds *datastore.Client, kind, prefix string) (*File, error) {
	objs, _, err := datastore.List[json.RawMessage](ctx, ds, prefix)
	if err != nil && !datastore.OnlyCorrupt(err) {
		return nil, fmt.Errorf("list %s: %w", kind, err)
	}
	data, merr := encodeRecords(objs)
	if merr != nil {
		return nil, fmt.Errorf("encode %s: %w", kind, merr)
	}
	if err != nil {
		err = fmt.Errorf("list %s: %w", kind, err)
	}
	return &File{Name: "datastore/" + kind + ".json", Data: data}, err
}

// encodeRecords writes a JSON array with one compact record per line: greppable, and a
// block's allocation list does not take a screen.
func encodeRecords(objs []datastore.Object[json.RawMessage]) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("[")
	for i, o := range objs {
		line, err := json.Marshal(Record{Key: o.Key, Revision: o.Revision, Lease: int64(o.Lease), Value: o.Value})
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n")
		b.Write(line)
	}
	b.WriteString("\n]\n")
	return b.Bytes(), nil
}
