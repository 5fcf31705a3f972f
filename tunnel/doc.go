// Package tunnel keeps the IPIP overlay: the tunl0 device with the node's
// tunnel address, and one route per remote node block (plus blackholes for the
// node's own blocks), all tagged with tabby's own route protocol so that only
// our routes are ever swept.
//
// Still to come: see the tunnel issue. The first-packet test in test/e2e
// builds the same shape by hand today.
package tunnel
