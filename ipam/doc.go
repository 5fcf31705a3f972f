// Package ipam allocates pod addresses from IP pools carved into per-node blocks whose
// affinity, allocations and handles live in etcd, written with compare-and-swap so no address
// is ever handed out twice. It is also the `tabby-ipam` CNI IPAM plugin (Plugin).
//
// # Model (Calico's, on tabby's schema; see datastore/doc.go for the keys)
//
// A pool (datastore.IPPool) is cut into blocks of its block size. A node allocates from blocks
// it has affinity for; when none has a free address it claims a free block in two phases —
// pending affinity, create the block, confirm the affinity — so a crash half-way leaves a
// visible pending claim that the node itself completes on its next allocation. Candidate
// blocks are visited in a per-node order (a start and an odd stride derived from a hash of the
// node name), so nodes rarely race for the same block. When a pool has no free block, or the
// node reached Config.MaxBlocksPerNode, the node borrows a free address from another node's
// block unless the pool is strictAffinity.
//
// Every allocation names a handle (HandleID: "<network>.<containerID>"; TunnelHandle for the
// IPIP tunnel address). The block and the handle record change in one etcd transaction, so
// they never disagree; an ADD that finds its handle already holding an address returns it.
// Lost races re-read and retry (datastore.Retry), bounded in attempts and time.
//
// The package's pure parts live in subpackages: block (ordinals, free lists, sequence numbers)
// and selector (pool node selectors). Collector finds and frees leaks; it never frees an
// address that was released and handed out again since it looked (sequence numbers).
package ipam
