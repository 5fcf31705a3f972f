package cniplugin

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/datastore"
)

// loadEndpoint returns the attachment's record, or nil when there is none.
func (c *call) loadEndpoint(ctx context.Context) (*datastore.Object[datastore.WorkloadEndpoint], error) {
	obj, err := datastore.Get[datastore.WorkloadEndpoint](ctx, c.store, c.endpointKey())
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, etcdError("read workload endpoint", err)
	}
	return &obj, nil
}

// saveEndpoint creates or replaces the record, compare-and-swap. A fresh
// ADD finds no record, so it tries a create first: one round trip.
func (c *call) saveEndpoint(ctx context.Context, rec datastore.WorkloadEndpoint) error {
	key := c.endpointKey()
	if _, err := c.store.Create(ctx, key, rec); err == nil {
		return nil
	} else if !errors.Is(err, datastore.ErrConflict) {
		return etcdError("write workload endpoint", err)
	}
	err := datastore.Retry(ctx, datastore.DefaultRetryPolicy(), func(ctx context.Context) error {
		obj, err := datastore.Get[datastore.WorkloadEndpoint](ctx, c.store, key)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			_, err = c.store.Create(ctx, key, rec)
		case err == nil || datastore.OnlyCorrupt(err):
			_, err = c.store.Update(ctx, key, rec, obj.Revision)
		}
		return err
	})
	if err != nil {
		return etcdError("write workload endpoint", err)
	}
	return nil
}

// deleteEndpoint removes the record; an absent record is fine.
func (c *call) deleteEndpoint(ctx context.Context) error {
	return c.deleteEndpointAt(ctx, c.endpointKey())
}

func (c *call) deleteEndpointAt(ctx context.Context, key string) error {
	err := datastore.Retry(ctx, datastore.DefaultRetryPolicy(), func(ctx context.Context) error {
		obj, err := datastore.Get[datastore.WorkloadEndpoint](ctx, c.store, key)
		if errors.Is(err, datastore.ErrNotFound) {
			return nil
		}
		if err != nil && !datastore.OnlyCorrupt(err) {
			return err
		}
		err = c.store.Delete(ctx, key, obj.Revision)
		if errors.Is(err, datastore.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return etcdError("delete workload endpoint "+key, err)
	}
	return nil
}

// etcdError reports a datastore failure as "try again later" (code 11): the
// runtime retries, which is right when etcd is briefly unreachable.
func etcdError(what string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: %v", what, err), "")
}
