// Package etcdflags binds the etcd connection flags that tabby-node and
// tabbyctl share. Defaults come from Calico's environment names
// (ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE), so a
// DaemonSet sets env and an operator may type flags.
package etcdflags

import (
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tabbynet/tabby/datastore"
)

// Flags holds the parsed values until Config is called.
type Flags struct {
	endpoints      string
	ca, cert, key  string
	prefix         string
	requestTimeout time.Duration
}

// Bind registers the flags on fs with defaults from getenv.
func Bind(fs *pflag.FlagSet, getenv func(string) string) *Flags {
	env := datastore.ConfigFromEnv(getenv)
	f := &Flags{}
	fs.StringVar(&f.endpoints, "etcd-endpoints", strings.Join(env.Endpoints, ","), "etcd client URLs, comma separated (env ETCD_ENDPOINTS)")
	fs.StringVar(&f.ca, "etcd-ca-cert-file", env.CAFile, "CA bundle that verifies etcd (env ETCD_CA_CERT_FILE)")
	fs.StringVar(&f.cert, "etcd-cert-file", env.CertFile, "client certificate for etcd (env ETCD_CERT_FILE)")
	fs.StringVar(&f.key, "etcd-key-file", env.KeyFile, "client key for etcd (env ETCD_KEY_FILE)")
	fs.StringVar(&f.prefix, "etcd-prefix", datastore.DefaultPrefix, "key prefix of tabby's records")
	fs.DurationVar(&f.requestTimeout, "etcd-timeout", datastore.DefaultRequestTimeout, "bound on each etcd request")
	return f
}

// Config returns the validated datastore configuration.
func (f *Flags) Config() (datastore.Config, error) {
	var eps []string
	for ep := range strings.SplitSeq(f.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	cfg := datastore.Config{Endpoints: eps, CAFile: f.ca, CertFile: f.cert, KeyFile: f.key,
		Prefix: f.prefix, RequestTimeout: f.requestTimeout}
	return cfg, cfg.Validate()
}
