package nodeagent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
)

// datastoreErrors counts failed etcd requests by operation
// (tabby_datastore_errors_total{op}) through datastore.Config.OnError. Lost
// compare-and-swaps are not failures and are not counted.
func datastoreErrors(reg prometheus.Registerer, next func(op string, err error)) func(op string, err error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tabby", Subsystem: "datastore", Name: "errors_total",
		Help: "Failed etcd requests, by op: get, list, txn (writes), ping, lease_grant, lease_revoke, watch. Lost compare-and-swaps are not failures."},
		[]string{"op"})
	for _, op := range []string{datastore.OpGet, datastore.OpList, datastore.OpTxn, datastore.OpPing,
		datastore.OpLeaseGrant, datastore.OpLeaseRevoke, datastore.OpWatch} {
		c.WithLabelValues(op)
	}
	reg.MustRegister(c)
	return func(op string, err error) {
		c.WithLabelValues(op).Inc()
		if next != nil {
			next(op, err)
		}
	}
}
