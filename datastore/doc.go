// Package datastore is tabby's etcd schema in one place: the key layout, the typed records
// stored under it, reads that return revisions, compare-and-swap writes, and watches that resume
// from a revision and re-list after compaction. Nothing else in tabby builds etcd keys.
//
// # Key layout
//
// Every key lives under one prefix, by default /tabby/v1/. Values are JSON objects with
// lower-camel field names. <cidr> is a CIDR with '/' replaced by '-' (see CIDRSegment), so a
// block is one path segment: 10.244.0.0/26 is stored as blocks/10.244.0.0-26.
//
//	key (under the prefix)                          record            written by
//	----------------------------------------------  ----------------  ---------------------------------
//	ippools/<name>                                  IPPool            operator / tabby-node at start
//	blocks/<cidr>                                   Block             IPAM (CAS; Calico's block model)
//	affinities/<node>/<cidr>                        BlockAffinity     IPAM, when a node claims a block
//	handles/<handleID>                              Handle            IPAM, one per pod interface
//	nodes/<name>                                    Node              tabby-node, under a lease
//	workloadendpoints/<node>/<containerID>/<iface>  WorkloadEndpoint  the CNI plugin, read by tabby-node
//	locks/<name>/…                                  (etcd mutex)      elections, e.g. locks/ipam-gc
//
// Keys builds each key and the prefixes used for listing and watching (all blocks, the
// affinities of one node, the endpoints of one container, ...); Keys.Parse goes back.
//
// # Reads and writes
//
// Get and List decode records and return etcd's ModRevision with each; Client.Create,
// Client.Update and Client.Delete succeed only if the key is still at the revision the caller
// read (absent, for Create). Client.Apply does the same for several keys at once, all or nothing,
// which IPAM needs to change a block and its handle together. A lost race is ErrConflict and a
// missing key ErrNotFound; Retry re-runs a read-modify-write on ErrConflict, bounded in attempts
// and time. A value that does not decode is a *CorruptError naming its key, never a panic; List
// returns the good records alongside such errors (see List for the exact contract).
//
// Every request is bounded by Config.RequestTimeout (or the caller's earlier deadline), so an
// unreachable etcd produces an error naming the endpoints instead of a hang.
//
// # Watches
//
// Client.Watch delivers a Snapshot (every key under a prefix at one revision) followed by
// batches of events. It resumes from the last delivered revision when the stream breaks, and
// when etcd has compacted past that revision it sends a fresh Snapshot which replaces whatever
// the consumer held.
package datastore
