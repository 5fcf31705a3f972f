package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLSFiles names PEM files on disk: a CA bundle plus one certificate and its key.
type TLSFiles struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// certPair is a certificate together with the key that signs for it, so the CA can issue leaves.
type certPair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

// writeTestPKI creates a throwaway CA, a server certificate valid for loopback and a client
// certificate, all in dir. Everything is generated in-process so tests need no openssl and
// no checked-in keys that could expire.
func writeTestPKI(dir string) (server, client TLSFiles, err error) {
	ca, err := newCert(nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "etcdtest CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return TLSFiles{}, TLSFiles{}, fmt.Errorf("create CA: %w", err)
	}
	srv, err := newCert(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdtest server"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return TLSFiles{}, TLSFiles{}, fmt.Errorf("create server cert: %w", err)
	}
	cli, err := newCert(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdtest client"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return TLSFiles{}, TLSFiles{}, fmt.Errorf("create client cert: %w", err)
	}

	caFile := filepath.Join(dir, "ca.pem")
	if err := writePEM(caFile, "CERTIFICATE", ca.der); err != nil {
		return TLSFiles{}, TLSFiles{}, err
	}
	server = TLSFiles{CAFile: caFile, CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem")}
	client = TLSFiles{CAFile: caFile, CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")}
	if err := writePair(server, srv); err != nil {
		return TLSFiles{}, TLSFiles{}, err
	}
	if err := writePair(client, cli); err != nil {
		return TLSFiles{}, TLSFiles{}, err
	}
	return server, client, nil
}

// newCert signs tmpl with parent, or self-signs it when parent is nil.
func newCert(parent *certPair, tmpl *x509.Certificate) (*certPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	tmpl.SerialNumber = serial
	// Back-date a little so a clock skew between "now" here and in the TLS handshake is harmless.
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(7 * 24 * time.Hour)

	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return &certPair{cert: cert, der: der, key: key}, nil
}

func writePair(files TLSFiles, p *certPair) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(p.key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := writePEM(files.CertFile, "CERTIFICATE", p.der); err != nil {
		return err
	}
	return writePEM(files.KeyFile, "PRIVATE KEY", keyDER)
}

func writePEM(path, typ string, der []byte) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
