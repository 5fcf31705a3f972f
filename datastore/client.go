package datastore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults for Config's zero fields.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	// keepAliveTime stays above etcd's default minimum ping interval (5 s) so it never
	// answers our pings with "too many pings".
	keepAliveTime = 10 * time.Second
)

// Config says how to reach etcd.
type Config struct {
	// Endpoints are etcd client URLs ("https://10.0.0.1:2379") or host:port pairs.
	Endpoints []string
	// DialTimeout bounds connection set-up work in the etcd client; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds every single request (the caller's earlier deadline wins);
	// 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// CAFile verifies the servers; CertFile and KeyFile are the client's certificate, given
	// together or not at all.
	CAFile, CertFile, KeyFile string
	// Prefix roots every key; empty means DefaultPrefix.
	Prefix string
	// Logger receives the client's warnings; nil means slog.Default().
	Logger *slog.Logger
	// OnError, when set, is told of every etcd request that failed, for a metric: op is one
	// of the Op* names, err the error as returned. A lost compare-and-swap or an absent key is
	// etcd answering, not a failure, and is not reported; nor is a request its caller
	// cancelled. It is called on the request's goroutine: keep it quick.
	OnError func(op string, err error)
}

// Request names given to Config.OnError.
const (
	OpGet         = "get"
	OpList        = "list"
	OpTxn         = "txn" // Create, Update, Delete and Apply
	OpPing        = "ping"
	OpLeaseGrant  = "lease_grant"
	OpLeaseRevoke = "lease_revoke"
	// OpWatch is a watch stream etcd ended, as a member that lost quorum does (compaction
	// excepted); its re-list counts as a list. A stream the etcd client resumes by itself (a
	// member restarted) is not seen here.
	OpWatch = "watch"
)

// ConfigFromEnv reads Calico's variable names: ETCD_ENDPOINTS (comma separated),
// ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE. Call Validate on the result.
func ConfigFromEnv(getenv func(string) string) Config {
	var eps []string
	for ep := range strings.SplitSeq(getenv("ETCD_ENDPOINTS"), ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	return Config{
		Endpoints: eps,
		CAFile:    strings.TrimSpace(getenv("ETCD_CA_CERT_FILE")),
		CertFile:  strings.TrimSpace(getenv("ETCD_CERT_FILE")),
		KeyFile:   strings.TrimSpace(getenv("ETCD_KEY_FILE")),
	}
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	c.Prefix = normalizePrefix(c.Prefix)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate checks the configuration as New will use it (defaults applied). It reads no files.
func (c Config) Validate() error {
	c = c.withDefaults()
	if len(c.Endpoints) == 0 {
		return errors.New("no etcd endpoints (ETCD_ENDPOINTS)")
	}
	for _, ep := range c.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			return err
		}
	}
	if c.DialTimeout < 0 || c.RequestTimeout < 0 {
		return fmt.Errorf("negative timeout (dial %s, request %s)", c.DialTimeout, c.RequestTimeout)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("etcd client certificate and key must be given together (ETCD_CERT_FILE, ETCD_KEY_FILE)")
	}
	return nil
}

func checkEndpoint(ep string) error {
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return fmt.Errorf("etcd endpoint %q: %w", ep, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("etcd endpoint %q: scheme must be http or https", ep)
		}
		if u.Path != "" && u.Path != "/" {
			return fmt.Errorf("etcd endpoint %q: unexpected path %q", ep, u.Path)
		}
		hostport = u.Host
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("etcd endpoint %q: want scheme://host:port or host:port", ep)
	}
	return nil
}

// tlsEnabled reports whether any TLS file is configured.
func (c Config) tlsEnabled() bool {
	return c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
}

// Client reads and writes tabby's records in etcd. It is safe for concurrent use.
type Client struct {
	cli     *clientv3.Client
	keys    Keys
	timeout time.Duration
	log     *slog.Logger
	onError func(op string, err error) // nil: nobody listens
	// owned is set when New created cli, so Close closes it.
	owned bool
}

// New connects to etcd. It does not wait for etcd to answer: the first request reports an
// unreachable cluster, within RequestTimeout, so a CNI call or an agent start fails clearly.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("etcd config: %w", err)
	}
	cfg = cfg.withDefaults()
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		// Without keepalives a silently dead connection is noticed only by request timeouts.
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: cfg.DialTimeout,
		Logger:               zapToSlog(cfg.Logger.With("component", "etcd-client")),
	}
	if cfg.tlsEnabled() {
		tlsCfg, err := transport.TLSInfo{
			CertFile:      cfg.CertFile,
			KeyFile:       cfg.KeyFile,
			TrustedCAFile: cfg.CAFile,
		}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS config: %w", err)
		}
		ccfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", cfg.Endpoints, err)
	}
	return &Client{cli: cli, keys: NewKeys(cfg.Prefix), timeout: cfg.RequestTimeout, log: cfg.Logger,
		onError: cfg.OnError, owned: true}, nil
}

// NewFromEtcd wraps an existing etcd client (tests, or a binary sharing one connection).
// Close does not close cli. An empty prefix means DefaultPrefix.
func NewFromEtcd(cli *clientv3.Client, prefix string) *Client {
	return &Client{cli: cli, keys: NewKeys(prefix), timeout: DefaultRequestTimeout, log: slog.Default()}
}

// Close releases the etcd client if New created it.
func (c *Client) Close() error {
	if !c.owned {
		return nil
	}
	if err := c.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// Keys builds keys under this client's prefix.
func (c *Client) Keys() Keys { return c.keys }

// Etcd is the underlying client, for what this package does not wrap (lease keep-alives).
func (c *Client) Etcd() *clientv3.Client { return c.cli }

// requestContext bounds one request by the request timeout, or by the
// caller's deadline when that comes first. A caller's long deadline (a whole
// CNI verb, a retry loop) must not let one request to a dead etcd hang for
// all of it.
func (c *Client) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// etcdError adds what an operator needs to an etcd failure: the operation, the key and, when
// etcd did not answer, which endpoints were tried. It reports the failure as kind (an Op*
// name) to OnError.
func (c *Client) etcdError(kind, op, key string, err error) error {
	c.failed(kind, err)
	if key != "" {
		op += " " + key
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// The cause (refused, TLS rejected, no leader) is in the etcd client's warnings; what the
		// caller sees is that no endpoint answered.
		return fmt.Errorf("%s: no answer from etcd at %v before the deadline: %w", op, c.cli.Endpoints(), err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// failed tells OnError of a failed request, unless the caller cancelled it.
func (c *Client) failed(kind string, err error) {
	if c.onError == nil || errors.Is(err, context.Canceled) {
		return
	}
	c.onError(kind, err)
}

// Ping checks that etcd answers a linearizable read, which needs a quorum.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	if _, err := c.cli.Get(ctx, c.keys.Prefix(), clientv3.WithCountOnly()); err != nil {
		return c.etcdError(OpPing, "ping", c.keys.Prefix(), err)
	}
	return nil
}

// Grant creates a lease of the given time-to-live, for records that must vanish with their
// writer (nodes). Keep it alive through Etcd().KeepAlive.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := c.cli.Grant(ctx, secs)
	if err != nil {
		return 0, c.etcdError(OpLeaseGrant, "grant lease", fmt.Sprintf("ttl %ds", secs), err)
	}
	return resp.ID, nil
}

// Revoke ends a lease, deleting every key attached to it.
func (c *Client) Revoke(ctx context.Context, id clientv3.LeaseID) error {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	if _, err := c.cli.Revoke(ctx, id); err != nil {
		return c.etcdError(OpLeaseRevoke, "revoke lease", fmt.Sprintf("%x", int64(id)), err)
	}
	return nil
}
