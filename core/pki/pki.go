// Package pki creates and reuses the API server's certificate authority, its serving
// certificate and the admin kubeconfig, so that a first start needs no manual setup
// (as with k3s and kubeadm) and a restart keeps every client that already trusts the CA.
package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/util/cert"
)

// File names under <data dir>/pki/.
const (
	caCertName      = "ca.crt"
	caKeyName       = "ca.key"
	servingCertName = "serving.crt"
	servingKeyName  = "serving.key"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// renewBefore re-issues leaf certificates a month ahead, so a server that restarts
	// now and then never serves, or hands out, a certificate about to expire.
	renewBefore = 30 * 24 * time.Hour
	// backdate tolerates small clock differences between the server and its clients;
	// a certificate that is "not yet valid" on a client would fail every handshake.
	backdate = 5 * time.Minute
)

// Bundle holds the material a server needs: the CA that signs client and serving
// certificates, and where the serving certificate and CA certificate live on disk.
type Bundle struct {
	CACert *x509.Certificate
	CAKey  crypto.Signer
	// CAPEM is CACert PEM-encoded, ready to embed in kubeconfigs.
	CAPEM []byte

	ServingCertFile, ServingKeyFile string
	CAFile                          string
}

// Ensure creates under dir/pki/ what is missing and reuses what exists: ca.crt/ca.key
// (10 years) and serving.crt/serving.key signed by the CA (1 year, SANs localhost,
// 127.0.0.1, ::1, the host name and extraSANs, each a host name or an IP). The serving
// certificate is re-issued when it lacks a requested SAN, expires within 30 days, or no
// longer matches its key or the CA. A file that exists but cannot be parsed is an error
// naming that file rather than silently replaced, since replacing the CA would cut off
// every client that trusts it.
func Ensure(dir string, extraSANs []string) (*Bundle, error) {
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir %s: %w", pkiDir, err)
	}
	sans, err := requestedSANs(extraSANs)
	if err != nil {
		return nil, err
	}
	now := time.Now()

	caCert, caKey, err := ensureCA(pkiDir, now)
	if err != nil {
		return nil, err
	}
	b := &Bundle{
		CACert:          caCert,
		CAKey:           caKey,
		CAPEM:           encodeCert(caCert),
		CAFile:          filepath.Join(pkiDir, caCertName),
		ServingCertFile: filepath.Join(pkiDir, servingCertName),
		ServingKeyFile:  filepath.Join(pkiDir, servingKeyName),
	}
	if err := b.ensureServing(sans, now); err != nil {
		return nil, err
	}
	return b, nil
}

// ensureCA loads the CA from pkiDir, or creates it when ca.crt does not exist.
func ensureCA(pkiDir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(pkiDir, caCertName)
	keyPath := filepath.Join(pkiDir, caKeyName)

	caCert, err := readCert(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		// A ca.key without ca.crt is left over from a start that died between the two
		// writes; nothing can trust a CA whose certificate was never written, so it is
		// safe to start over.
		return createCA(certPath, keyPath, now)
	}
	if err != nil {
		return nil, nil, err
	}
	caKey, err := readKey(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("CA key %s is missing but %s exists; restore it, or remove both to create a new CA (clients trusting the old one will then fail): %w", keyPath, certPath, err)
	}
	if err != nil {
		return nil, nil, err
	}
	if !publicKeysEqual(caCert.PublicKey, caKey) {
		return nil, nil, fmt.Errorf("CA key %s does not match certificate %s", keyPath, certPath)
	}
	if !caCert.IsCA {
		return nil, nil, fmt.Errorf("certificate %s is not a CA certificate", certPath)
	}
	if now.After(caCert.NotAfter) {
		return nil, nil, fmt.Errorf("CA certificate %s expired on %s; remove %s and %s to create a new CA", certPath, caCert.NotAfter.Format(time.RFC3339), certPath, keyPath)
	}
	return caCert, caKey, nil
}

func createCA(certPath, keyPath string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := caTemplate(now)
	der, err := x509.CreateCertificate(randReader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	// Key first: a crash between the writes leaves no ca.crt, which the next start
	// treats as "no CA yet" instead of a certificate without its key.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(certPath, encodeCert(caCert), 0o644); err != nil {
		return nil, nil, err
	}
	return caCert, key, nil
}

// ensureServing keeps the serving certificate on disk if it is still good for sans,
// and issues a new one otherwise.
func (b *Bundle) ensureServing(sans cert.AltNames, now time.Time) error {
	ok, err := b.servingUsable(sans, now)
	if err != nil || ok {
		return err
	}
	certPEM, keyPEM, _, err := b.issue(servingTemplate(sans, now))
	if err != nil {
		return fmt.Errorf("issue serving certificate: %w", err)
	}
	// Key first: a crash between the writes leaves a certificate that does not match
	// its key, which the next start detects and re-issues.
	if err := writeFileAtomic(b.ServingKeyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(b.ServingCertFile, certPEM, 0o644)
}

// servingUsable reports whether the serving certificate and key on disk can be kept.
// Missing files are not an error (they are simply issued); unparseable ones are.
func (b *Bundle) servingUsable(sans cert.AltNames, now time.Time) (bool, error) {
	servingCert, err := readCert(b.ServingCertFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	key, err := readKey(b.ServingKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	switch {
	case !publicKeysEqual(servingCert.PublicKey, key):
		return false, nil
	case servingCert.CheckSignatureFrom(b.CACert) != nil:
		return false, nil
	case !servingCert.NotAfter.After(now.Add(renewBefore)):
		return false, nil
	case !sansCoveredBy(sans, servingCert):
		return false, nil
	}
	return true, nil
}

// publicKeysEqual reports whether key is the private half of pub.
func publicKeysEqual(pub crypto.PublicKey, key crypto.Signer) bool {
	p, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && p.Equal(pub)
}
