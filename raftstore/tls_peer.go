package raftstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// DefaultPeerName is the identity every control node's Raft certificate
// carries by default (a DNS name in its subject alternative names, or its
// common name); see TLS.PeerName.
const DefaultPeerName = "zk-migrate-raft"

// ErrNotRaftPeer means a certificate chains to the Raft CA but is not a
// control node's Raft certificate: it does not carry the configured
// identity, or it cannot both dial and accept (serverAuth and clientAuth).
var ErrNotRaftPeer = errors.New("raftstore: not a control node's Raft certificate")

// peerHint is the remediation for ErrNotRaftPeer.
const peerHint = "every control node's Raft certificate must carry the --raft-tls-peer-name identity (a DNS SAN or the CN) " +
	"and both the serverAuth and clientAuth extended key usages; sign Raft certificates with a dedicated CA, never the API clients' CA"

// CheckPeerCert says whether cert is a control node's Raft certificate:
// it names name (a DNS SAN or the common name) and may both serve and
// dial (the serverAuth and clientAuth extended key usages, or any). The
// chain is the TLS handshake's business; this is the authorization that
// keeps other certificates of the same CA (an API client's) off the Raft
// port.
func CheckPeerCert(cert *x509.Certificate, name string) error {
	if name == "" {
		name = DefaultPeerName
	}
	if cert.Subject.CommonName != name && !slices.Contains(cert.DNSNames, name) {
		return fmt.Errorf("%w: certificate %q (DNS names %v) does not carry the identity %q", ErrNotRaftPeer, cert.Subject.CommonName, cert.DNSNames, name)
	}
	if slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return nil
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("%w: certificate %q lacks the serverAuth and clientAuth extended key usages (a control node both dials and accepts)", ErrNotRaftPeer, cert.Subject.CommonName)
	}
	return nil
}

// checkConn applies CheckPeerCert to the leaf certificate a handshaken
// connection's peer presented.
func checkConn(tc *tls.Conn, name string) error {
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return fmt.Errorf("%w: the peer presented no certificate", ErrNotRaftPeer)
	}
	return CheckPeerCert(certs[0], name)
}
