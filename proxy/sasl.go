package proxy

import (
	"github.com/zk-migrate/zk-migrate/jute"
)

// SASL through the proxy (SPEC.md 4.12). A SASL exchange (DIGEST-MD5,
// GSSAPI) is a challenge-response bound to one connection: the proxy
// relays it to the primary untouched but can never replay it on another
// upstream connection. So:
//
//   - the relay's own connection: after a server death (upstream.go) and
//     after a flip (saslFlipped) the client's connection is closed; the
//     client reconnects with its session id and runs SASL again on the new
//     upstream connection, as every client library does after a lost
//     connection. The session never holds an identity the proxy made up.
//   - the shadow session and the mirror's reads of the primary act for a
//     client whose writes the primary has already authorized with the
//     client's own identity: they copy state, decide nothing. They present
//     Config.SASLMirrorAuth, the proxy's own identity, which the ensembles'
//     ACLs (or their super user) must let read and write what the SASL
//     clients write. Without it they act as the world and SASL-protected
//     writes are left to the replicator (mirror_failures_total{reason="noauth"}).

// saslStarted records that the client runs SASL on this connection.
func (s *session) saslStarted() {
	if s.sasl.Swap(true) || s.shadow == nil {
		return
	}
	if len(s.srv.cfg.SASLMirrorAuth) == 0 {
		s.cc.logs.warn(s.log, "sasl_no_mirror_identity", "a SASL client's writes to SASL-protected znodes cannot be mirrored: the proxy has no identity for its shadow session",
			"hint", "give the proxy --mirror-auth-file (a digest user the ensembles' ACLs or superDigest admit); until then the replicator copies them")
		return
	}
	for _, a := range s.srv.cfg.SASLMirrorAuth {
		s.shadow.addAuth(&jute.AuthPacket{Scheme: a.Scheme, Auth: a.Secret})
	}
}

// saslFlipped ends the client connection of a SASL session the flip has
// just moved: its new upstream connection carries no SASL identity, and
// only the client can authenticate again (it reconnects with the same
// session id, now served by the new primary).
func (s *session) saslFlipped() {
	if !s.sasl.Load() {
		return
	}
	s.srv.m.reconnects.WithLabelValues("client_reconnect").Inc()
	s.log.Info("flip: session authenticated with SASL; closing the client connection so it authenticates on the new primary")
	s.shutdown("session authenticated with SASL cannot be replayed on the new primary; client must reconnect")
}
