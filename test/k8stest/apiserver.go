package k8stest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// DefaultServiceCIDR is the Service cluster IP range when APIServerOptions leaves it empty.
	DefaultServiceCIDR = "10.96.0.0/16"
	// AdminUser is the user the admin token authenticates as; it is in system:masters.
	AdminUser = "k8stest-admin"
	// ServiceAccountIssuer is the issuer of service account tokens.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

	defaultStartTimeout = 90 * time.Second
	// startAttempts bounds retries when the port we picked was taken before the apiserver bound it.
	startAttempts = 3
)

// APIServerOptions shape an apiserver. The zero value is an AlwaysAllow apiserver for
// 10.96.0.0/16 that builds (or finds cached) binaries itself.
type APIServerOptions struct {
	// Binaries to run; nil means Prepare (which may build for minutes on a cold cache).
	Binaries *Binaries
	// RBAC authorizes with Node,RBAC instead of AlwaysAllow; the admin stays in system:masters.
	RBAC bool
	// ServiceCIDR is --service-cluster-ip-range; empty means DefaultServiceCIDR.
	ServiceCIDR string
	// EtcdPrefix is --etcd-prefix; empty means a random one, so instances can share an etcd.
	EtcdPrefix string
	// EtcdTLS holds the client certificate for an etcd that serves TLS (etcdtest.Options.TLS).
	EtcdTLS *EtcdTLS
	// Users are extra bearer-token users besides the admin.
	Users []TokenUser
	// ExtraArgs are appended after the harness's flags, so they win.
	ExtraArgs []string
	// StartTimeout bounds the wait for /readyz; 0 means 90 s.
	StartTimeout time.Duration
}

// EtcdTLS names the PEM files the apiserver uses to reach etcd over TLS.
type EtcdTLS struct {
	CAFile, CertFile, KeyFile string
}

// TokenUser is one line of the static token file.
type TokenUser struct {
	Token  string
	User   string
	Groups []string
}

// APIServer is a running (or stopped) kube-apiserver. Its methods are safe for concurrent use.
type APIServer struct {
	dir        string
	bin        string
	opts       APIServerOptions
	etcd       []string
	pki        *PKI
	adminToken string
	kubeconfig string
	logPath    string
	tokenFile  string
	restConfig *rest.Config
	clientset  *kubernetes.Clientset

	mu        sync.Mutex
	port      int
	proc      *process
	startTime time.Duration
	closed    bool
}

// NewAPIServer starts a kube-apiserver whose certificates, token file, kubeconfig and log
// live in dir, against the etcd at etcdEndpoints, and waits until /readyz answers ok.
// Close it when done.
func NewAPIServer(ctx context.Context, dir string, etcdEndpoints []string, opts APIServerOptions) (*APIServer, error) {
	if len(etcdEndpoints) == 0 {
		return nil, errors.New("k8stest: apiserver needs at least one etcd endpoint")
	}
	if opts.Binaries == nil {
		b, err := Prepare(ctx)
		if err != nil {
			return nil, err
		}
		opts.Binaries = b
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = DefaultServiceCIDR
	}
	cidr, err := netip.ParsePrefix(opts.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("k8stest: service CIDR: %w", err)
	}
	if opts.EtcdPrefix == "" {
		opts.EtcdPrefix = "/k8stest-" + randomHex(6)
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("k8stest: create apiserver dir: %w", err)
	}
	s := &APIServer{
		dir:        dir,
		bin:        opts.Binaries.APIServer,
		opts:       opts,
		etcd:       etcdEndpoints,
		adminToken: randomHex(16),
		kubeconfig: filepath.Join(dir, "kubeconfig"),
		logPath:    filepath.Join(dir, "kube-apiserver.log"),
		tokenFile:  filepath.Join(dir, "tokens.csv"),
	}
	if s.pki, err = newPKI(dir, cidr); err != nil {
		return nil, fmt.Errorf("k8stest: %w", err)
	}
	if err := s.writeTokenFile(); err != nil {
		return nil, err
	}
	if err := s.startFresh(ctx); err != nil {
		return nil, err
	}
	if err := s.initClients(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// startFresh starts the apiserver on a free port, trying another port if that one was
// taken between picking and binding.
func (s *APIServer) startFresh(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("k8stest: %w", err)
		}
		s.port = port
		err = s.startLocked(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			return err
		}
	}
}

var errAddrInUse = errors.New("address already in use")

// startLocked starts the process on s.port and waits for /readyz. Callers hold s.mu.
func (s *APIServer) startLocked(ctx context.Context) error {
	start := time.Now()
	p, err := startProcess(s.bin, s.args(), s.logPath)
	if err != nil {
		return fmt.Errorf("k8stest: kube-apiserver: %w", err)
	}
	s.proc = p
	ctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
	defer cancel()
	if err := waitReady(ctx, p, s.URL(), s.pki.CACert, s.adminToken); err != nil {
		_ = p.stop(false)
		out := p.output(s.logPath)
		if strings.Contains(out, "address already in use") {
			return fmt.Errorf("k8stest: kube-apiserver on port %d: %w", s.port, errAddrInUse)
		}
		return fmt.Errorf("k8stest: kube-apiserver not ready (log %s): %w\n%s", s.logPath, err,
			tailLines([]byte(out), logTailLines))
	}
	s.startTime = time.Since(start)
	return nil
}

// args are the kube-apiserver flags; see the package README for why each is there.
func (s *APIServer) args() []string {
	authz := "AlwaysAllow"
	if s.opts.RBAC {
		authz = "Node,RBAC"
	}
	a := []string{
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(s.port),
		// The default reconciler refuses a loopback advertise address; nothing needs the
		// kubernetes Service's endpoints to be kept up to date here.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + s.dir,
		"--tls-cert-file=" + s.pki.ServingCert,
		"--tls-private-key-file=" + s.pki.ServingKey,
		"--client-ca-file=" + s.pki.CACert,
		"--token-auth-file=" + s.tokenFile,
		"--authorization-mode=" + authz,
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + s.pki.ServiceAccountKey,
		"--service-account-signing-key-file=" + s.pki.ServiceAccountKey,
		"--service-cluster-ip-range=" + s.opts.ServiceCIDR,
		"--etcd-servers=" + strings.Join(s.etcd, ","),
		"--etcd-prefix=" + s.opts.EtcdPrefix,
		"--allow-privileged=true", // tabby's DaemonSet is privileged
		"--profiling=false",
	}
	if t := s.opts.EtcdTLS; t != nil {
		a = append(a, "--etcd-cafile="+t.CAFile, "--etcd-certfile="+t.CertFile, "--etcd-keyfile="+t.KeyFile)
	}
	return append(a, s.opts.ExtraArgs...)
}

func (s *APIServer) writeTokenFile() error {
	users := append([]TokenUser{{Token: s.adminToken, User: AdminUser, Groups: []string{"system:masters"}}}, s.opts.Users...)
	var b strings.Builder
	for i, u := range users {
		if u.Token == "" || u.User == "" || strings.ContainsAny(u.Token+u.User, ",\"\n") {
			return fmt.Errorf("k8stest: token user %d: token and user must be set and free of commas and quotes", i)
		}
		// token,user,uid,"group1,group2"
		fmt.Fprintf(&b, "%s,%s,%s,%q\n", u.Token, u.User, u.User, strings.Join(u.Groups, ","))
	}
	if err := os.WriteFile(s.tokenFile, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("k8stest: write token file: %w", err)
	}
	return nil
}

// Stop terminates the apiserver gracefully; Restart brings it back on the same port.
func (s *APIServer) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	err := s.proc.stop(true)
	s.proc = nil
	if err != nil {
		return fmt.Errorf("k8stest: stop kube-apiserver: %w", err)
	}
	return nil
}

// Restart stops the apiserver if it runs and starts it again with the same port, flags
// and keys, waiting for /readyz. Clients handed out before keep working.
func (s *APIServer) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("k8stest: apiserver closed")
	}
	return s.startLocked(ctx)
}

// Kill stops the apiserver with SIGKILL, as a crash would; Restart brings it back.
func (s *APIServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		_ = s.proc.stop(false)
		s.proc = nil
	}
}

// Close kills the apiserver (its state is in etcd; a graceful stop would only cost
// seconds) and makes Restart fail. It is safe to call twice.
func (s *APIServer) Close() {
	s.Kill()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
}

// URL is the https URL of the apiserver, on 127.0.0.1.
func (s *APIServer) URL() string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Kubeconfig is the path of a kubeconfig file for the admin (token and CA embedded).
func (s *APIServer) Kubeconfig() string { return s.kubeconfig }

// RESTConfig returns a copy of the admin's client configuration.
func (s *APIServer) RESTConfig() *rest.Config { return rest.CopyConfig(s.restConfig) }

// Clientset is a client-go clientset for the admin.
func (s *APIServer) Clientset() *kubernetes.Clientset { return s.clientset }

// AdminToken is the admin's bearer token.
func (s *APIServer) AdminToken() string { return s.adminToken }

// PKI names the CA, serving and service account key files.
func (s *APIServer) PKI() *PKI { return s.pki }

// Dir holds the certificates, token file, kubeconfig and log.
func (s *APIServer) Dir() string { return s.dir }

// LogFile is the path of the apiserver's log (all runs, appended).
func (s *APIServer) LogFile() string { return s.logPath }

// EtcdPrefix is the etcd key prefix this apiserver stores under.
func (s *APIServer) EtcdPrefix() string { return s.opts.EtcdPrefix }

// StartupTime is how long the last start took, from exec to a ready /readyz.
func (s *APIServer) StartupTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startTime
}

// Running reports whether the apiserver process is alive.
func (s *APIServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
