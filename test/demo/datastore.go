package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// showDatastore starts a real etcd in-process and shows the contract every
// tabby writer relies on: a create, a watch that sees it, and a stale
// compare-and-swap that is refused.
func showDatastore(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "tabby-demo-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	cluster, err := etcdtest.New(dir, etcdtest.Options{})
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer cluster.Close()
	fmt.Fprintf(w, "etcd started in-process at %v in %v\n", cluster.Endpoints(), time.Since(start).Round(time.Millisecond))

	c, err := datastore.New(datastore.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		return err
	}
	defer c.Close()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	updates := c.Watch(wctx, c.Keys().IPPools(), 0)
	<-updates // the initial snapshot: no pools yet

	pool := datastore.IPPool{Name: "default-ipv4-ippool", CIDR: "10.244.0.0/16", IPIPMode: datastore.IPIPAlways, NATOutgoing: true}.WithDefaults()
	key := c.Keys().IPPool(pool.Name)
	rev, err := c.Create(ctx, key, pool)
	if err != nil {
		return fmt.Errorf("create pool: %w", err)
	}
	fmt.Fprintf(w, "created %s at revision %d (%s, /%d blocks, ipipMode %s)\n", key, rev, pool.CIDR, pool.BlockSize, pool.IPIPMode)
	select {
	case u := <-updates:
		fmt.Fprintf(w, "the watch saw %d event(s) at revision %d\n", len(u.Events), u.Revision)
	case <-time.After(5 * time.Second):
		return errors.New("the watch saw nothing within 5 s")
	}
	if _, err := c.Update(ctx, key, pool, rev); err != nil {
		return fmt.Errorf("update at the current revision: %w", err)
	}
	_, err = c.Update(ctx, key, pool, rev) // rev is stale now
	if !errors.Is(err, datastore.ErrConflict) {
		return fmt.Errorf("a stale update was not refused: %v", err)
	}
	fmt.Fprintf(w, "a second update at the stale revision %d was refused: %v\n", rev, err)
	return nil
}
