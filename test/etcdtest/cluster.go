// Package etcdtest runs a real etcd cluster inside the test process, on loopback ports, for tests,
// benchmarks and demos. Members can be stopped, killed and restarted to exercise failover.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Options shape a cluster. The zero value is a quiet 1-member plaintext cluster.
type Options struct {
	// Members is the cluster size; 0 means 1. Use 3 for failover tests.
	Members int
	// TLS serves client traffic over TLS and requires client certificates; see ClientTLS.
	TLS bool
	// LogFile receives etcd's logs; empty means etcd.log inside the cluster directory.
	LogFile string
	// TickMs and ElectionMs are raft's heartbeat and election timeout; 0 means 10 and 100.
	TickMs, ElectionMs uint
	// UnsafeNoFsync skips fsync for speed; data survives Kill because the process lives on.
	UnsafeNoFsync bool
}

// ErrNoLeader is returned by Leader when no running member currently leads.
var ErrNoLeader = errors.New("no leader")

const (
	defaultTickMs     = 10
	defaultElectionMs = 100
	maxMembers        = 7
	// startAttempts bounds retries when a free port we picked was taken before etcd bound it.
	startAttempts = 5
	readyTimeout  = 30 * time.Second
	dialTimeout   = 5 * time.Second
)

// Cluster is a running in-process etcd cluster. Its methods are safe for concurrent use.
type Cluster struct {
	dir       string
	opts      Options
	token     string
	initial   string // the initial-cluster flag, reused on restart
	serverTLS TLSFiles
	clientTLS TLSFiles
	logFile   *os.File
	log       *zap.Logger

	mu      sync.Mutex
	members []*member
	clients []*clientv3.Client
	closed  bool
}

type member struct {
	name      string
	dataDir   string
	peerURL   url.URL
	clientURL url.URL
	etcd      *embed.Etcd
	// cut is closed when this incarnation stops, so clients see it dead at once (see cutter).
	cut chan struct{}
	// closed is closed once the last stopped incarnation has released its files and ports.
	closed chan struct{}
}

// New starts a cluster whose data, certificates and default log live under dir, and waits
// until it is ready. Close it when done.
func New(dir string, opts Options) (*Cluster, error) {
	if opts.Members == 0 {
		opts.Members = 1
	}
	if opts.Members < 1 || opts.Members > maxMembers {
		return nil, fmt.Errorf("etcdtest: members must be 1..%d, got %d", maxMembers, opts.Members)
	}
	if opts.TickMs == 0 {
		opts.TickMs = defaultTickMs
	}
	if opts.ElectionMs == 0 {
		opts.ElectionMs = defaultElectionMs
	}
	if opts.LogFile == "" {
		opts.LogFile = filepath.Join(dir, "etcd.log")
	}
	c := &Cluster{dir: dir, opts: opts, token: fmt.Sprintf("etcdtest-%x", rand.Uint64())}
	if err := c.openLog(); err != nil {
		return nil, err
	}
	if opts.TLS {
		pki := filepath.Join(dir, "pki")
		if err := os.MkdirAll(pki, 0o700); err != nil {
			c.Close()
			return nil, fmt.Errorf("etcdtest: create pki dir: %w", err)
		}
		var err error
		if c.serverTLS, c.clientTLS, err = writeTestPKI(pki); err != nil {
			c.Close()
			return nil, fmt.Errorf("etcdtest: %w", err)
		}
	}
	if err := c.startWithRetry(); err != nil {
		c.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) openLog() error {
	if err := os.MkdirAll(filepath.Dir(c.opts.LogFile), 0o700); err != nil {
		return fmt.Errorf("etcdtest: create log dir: %w", err)
	}
	f, err := os.OpenFile(c.opts.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("etcdtest: open log: %w", err)
	}
	c.logFile = f
	c.log = newFileLogger(f)
	return nil
}

// startWithRetry starts every member on fresh ports. Ports are picked by binding :0 and
// releasing, so another process can steal one before etcd binds it; then we start over.
func (c *Cluster) startWithRetry() error {
	for attempt := 1; ; attempt++ {
		err := c.startAll()
		if err == nil {
			return nil
		}
		c.mu.Lock()
		for _, m := range c.members {
			c.halt(m, false)
			_ = os.RemoveAll(m.dataDir)
		}
		c.members = nil
		c.mu.Unlock()
		if !isAddrInUse(err) || attempt == startAttempts {
			return fmt.Errorf("etcdtest: start cluster (attempt %d): %w", attempt, err)
		}
	}
}

func (c *Cluster) startAll() error {
	ports, err := freePorts(2 * c.opts.Members)
	if err != nil {
		return err
	}
	scheme := "http"
	if c.opts.TLS {
		scheme = "https"
	}
	members := make([]*member, c.opts.Members)
	peers := make([]string, c.opts.Members)
	for i := range members {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			peerURL:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])},
			clientURL: url.URL{Scheme: scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])},
		}
		m.dataDir = filepath.Join(c.dir, m.name)
		members[i] = m
		peers[i] = m.name + "=" + m.peerURL.String()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members = members
	c.initial = strings.Join(peers, ",")
	for _, m := range members {
		if err := c.startMember(m); err != nil {
			return err
		}
	}
	return nil
}

// startMember launches one incarnation of m. For a member with existing data etcd ignores
// the initial cluster and rejoins from its WAL, which is what Restart relies on.
func (c *Cluster) startMember(m *member) error {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dataDir
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = c.token
	cfg.TickMs = c.opts.TickMs
	cfg.ElectionMs = c.opts.ElectionMs
	cfg.UnsafeNoFsync = c.opts.UnsafeNoFsync
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.log.With(zap.String("member", m.name)))
	// Metrics would register listeners we do not need; "basic" keeps the in-process registry small.
	cfg.Metrics = "basic"
	if c.opts.TLS {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       c.serverTLS.CertFile,
			KeyFile:        c.serverTLS.KeyFile,
			TrustedCAFile:  c.serverTLS.CAFile,
			ClientCertAuth: true,
		}
	}
	if m.closed != nil {
		<-m.closed
	}
	m.cut = make(chan struct{})
	cfg.GRPCAdditionalServerOptions = cutter(m.cut)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start member %s: %w", m.name, err)
	}
	m.etcd = e
	return nil
}

// halt stops m's running incarnation, if any. Callers hold c.mu.
func (c *Cluster) halt(m *member, graceful bool) {
	e := m.etcd
	if e == nil {
		return
	}
	if graceful {
		// Like SIGTERM: hand leadership over first so the cluster does not wait an election out.
		e.Server.Stop()
	} else {
		// Like SIGKILL: the sockets vanish before raft gets a chance to say goodbye.
		for _, p := range e.Peers {
			_ = p.Close()
		}
		for _, l := range e.Clients {
			_ = l.Close()
		}
		e.Server.HardStop()
	}
	// Without this, embed's Close waits its full request timeout (>5 s) for open watch streams.
	close(m.cut)
	// The server is down already; what remains is tearing down listeners, and the peer HTTP server
	// alone waits a second for idle connections. Do it behind the caller's back; whoever next
	// needs the ports or data directory waits on closed.
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		e.Close()
	}()
	m.etcd = nil
	m.closed = closed
}

// Close stops every member and closes every client handed out. It is safe to call twice.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for _, cli := range c.clients {
		_ = cli.Close()
	}
	c.clients = nil
	for _, m := range c.members {
		c.halt(m, false)
	}
	for _, m := range c.members {
		if m.closed != nil {
			<-m.closed
		}
	}
	if c.log != nil {
		_ = c.log.Sync()
	}
	if c.logFile != nil {
		_ = c.logFile.Close()
	}
}

// Dir is the directory holding the members' data, certificates and (by default) the log.
func (c *Cluster) Dir() string { return c.dir }

// LogFile is the path of etcd's log.
func (c *Cluster) LogFile() string { return c.opts.LogFile }

// Size is the number of members, running or not.
func (c *Cluster) Size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.members)
}

// Endpoints are the client URLs of all members, including stopped ones (clients fail over).
func (c *Cluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL.String()
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.members) {
		return ""
	}
	return c.members[i].clientURL.String()
}

// ClientTLS returns the CA and the client certificate and key to reach a TLS cluster;
// ok is false when the cluster serves plaintext.
func (c *Cluster) ClientTLS() (files TLSFiles, ok bool) {
	return c.clientTLS, c.opts.TLS
}

// FastReconnect is a gRPC dial option for clients of a cluster whose members restart: it
// retries a lost connection within ~100 ms instead of gRPC's default backoff of a second and
// more, which would otherwise dominate restart tests.
func FastReconnect() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 100 * time.Millisecond},
		MinConnectTimeout: time.Second,
	})
}

// NewClient returns a client for all members, using FastReconnect. The cluster closes it on
// Close if the caller has not.
func (c *Cluster) NewClient() (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: dialTimeout,
		DialOptions: []grpc.DialOption{FastReconnect()},
		// The client's zap output would interleave with test output; callers own their logging.
		Logger: zap.NewNop(),
	}
	if c.opts.TLS {
		tlsCfg, err := transport.TLSInfo{
			CertFile:      c.clientTLS.CertFile,
			KeyFile:       c.clientTLS.KeyFile,
			TrustedCAFile: c.clientTLS.CAFile,
		}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcdtest: client TLS config: %w", err)
		}
		cfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdtest: new client: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = cli.Close()
		return nil, errors.New("etcdtest: cluster closed")
	}
	c.clients = append(c.clients, cli)
	return cli, nil
}

func freePorts(n int) ([]int, error) {
	// Hold every listener until all are chosen so the kernel cannot hand out one port twice.
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}
