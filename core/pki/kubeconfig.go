package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/cert"
)

// Names inside the admin kubeconfig.
const (
	kubeconfigCluster = "berth"
	kubeconfigContext = "berth"
	kubeconfigUser    = "admin"
	// groupMasters is the group Kubernetes RBAC treats as cluster-admin.
	groupMasters = "system:masters"
)

// WriteKubeconfig writes path (atomically, mode 0600) with cluster "berth" (serverURL,
// CA embedded), user "admin" (a client certificate for CN=admin, O=system:masters,
// embedded) and context "berth", set current. An existing file that already points at
// serverURL with this CA and an admin certificate valid for more than 30 days is left
// untouched, so restarts do not churn the credentials users have copied; any other
// file at path is replaced.
func (b *Bundle) WriteKubeconfig(path, serverURL string) error {
	if b.kubeconfigCurrent(path, serverURL, time.Now()) {
		return nil
	}
	certPEM, keyPEM, err := b.IssueClientCert(kubeconfigUser, []string{groupMasters})
	if err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[kubeconfigCluster] = &clientcmdapi.Cluster{
		Server:                   serverURL,
		CertificateAuthorityData: b.CAPEM,
	}
	cfg.AuthInfos[kubeconfigUser] = &clientcmdapi.AuthInfo{
		ClientCertificateData: certPEM,
		ClientKeyData:         keyPEM,
	}
	cfg.Contexts[kubeconfigContext] = &clientcmdapi.Context{
		Cluster:  kubeconfigCluster,
		AuthInfo: kubeconfigUser,
	}
	cfg.CurrentContext = kubeconfigContext
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("encode kubeconfig %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create kubeconfig dir for %s: %w", path, err)
	}
	return writeFileAtomic(path, data, 0o600)
}

// kubeconfigCurrent reports whether the kubeconfig at path can be kept. Any problem,
// including a missing or unreadable file, means "no": the caller rewrites it.
func (b *Bundle) kubeconfigCurrent(path, serverURL string, now time.Time) bool {
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil || cfg.CurrentContext != kubeconfigContext {
		return false
	}
	ctx := cfg.Contexts[kubeconfigContext]
	if ctx == nil || ctx.Cluster != kubeconfigCluster || ctx.AuthInfo != kubeconfigUser {
		return false
	}
	cluster := cfg.Clusters[kubeconfigCluster]
	if cluster == nil || cluster.Server != serverURL {
		return false
	}
	// A new CA (data dir wiped) makes the old file useless even if it looks fine.
	caCerts, err := cert.ParseCertsPEM(cluster.CertificateAuthorityData)
	if err != nil || len(caCerts) != 1 || !caCerts[0].Equal(b.CACert) {
		return false
	}
	user := cfg.AuthInfos[kubeconfigUser]
	if user == nil {
		return false
	}
	// X509KeyPair also checks that the key belongs to the certificate.
	pair, err := tls.X509KeyPair(user.ClientCertificateData, user.ClientKeyData)
	if err != nil {
		return false
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return false
	}
	if leaf.Subject.CommonName != kubeconfigUser || !slices.Contains(leaf.Subject.Organization, groupMasters) {
		return false
	}
	if !leaf.NotAfter.After(now.Add(renewBefore)) {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(b.CACert)
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err == nil
}
