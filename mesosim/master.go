package mesosim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// MasterConfig configures a master; the defaults are Mesos' own.
type MasterConfig struct {
	ZK                   ZKURL
	Quorum               int           // --quorum: replicas needed for a log write
	SessionTimeout       time.Duration // --zk_session_timeout (10s)
	RegistryFetchTimeout time.Duration // --registry_fetch_timeout (1m)
	RegistryStoreTimeout time.Duration // --registry_store_timeout (20s)
	AgentPingTimeout     time.Duration // --agent_ping_timeout (15s)
	MaxAgentPingTimeouts int           // --max_agent_ping_timeouts (5)
	Hostname             string
	IP                   string
	Listener             net.Listener // serves the HTTP API on IP:port
	Log                  *slog.Logger
}

func (c *MasterConfig) defaults() {
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.RegistryFetchTimeout == 0 {
		c.RegistryFetchTimeout = time.Minute
	}
	if c.RegistryStoreTimeout == 0 {
		c.RegistryStoreTimeout = 20 * time.Second
	}
	if c.AgentPingTimeout == 0 {
		c.AgentPingTimeout = 15 * time.Second
	}
	if c.MaxAgentPingTimeouts == 0 {
		c.MaxAgentPingTimeouts = 5
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// ExitError is a condition on which a Mesos master exits with
// EXIT_FAILURE (the caller exits the process with status 1 and does not
// close its ZooKeeper sessions, as Mesos' EXIT does not).
type ExitError struct {
	Reason string
	Err    error
}

// Error is the reason and its cause.
func (e *ExitError) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *ExitError) Unwrap() error { return e.Err }

// Master is one emulated Mesos master.
type Master struct {
	cfg       MasterConfig
	info      MasterInfo
	log       *slog.Logger
	detector  *Detector
	replicas  *mailbox[replicaSet]
	replica   replica
	registrar registrar
	fatal     chan error // a leader's goroutine hit a condition Mesos exits on

	mu       sync.Mutex
	electing bool    // elected: recovering or leading
	leader   *leader // non-nil once recovered
}

// NewMaster checks cfg and builds the master's MasterInfo from its
// listener's address.
func NewMaster(cfg MasterConfig) (*Master, error) {
	cfg.defaults()
	if cfg.Quorum < 1 {
		return nil, fmt.Errorf("mesosim: --quorum is required and must be at least 1 (a majority of the masters: 2 for 3 masters)")
	}
	if cfg.Listener == nil {
		return nil, errors.New("mesosim: master needs a listener")
	}
	_, port, err := net.SplitHostPort(cfg.Listener.Addr().String())
	if err != nil {
		return nil, err
	}
	p, _ := strconv.Atoi(port)
	info, err := NewMasterInfo(cfg.Hostname, cfg.IP, p)
	if err != nil {
		return nil, err
	}
	m := &Master{cfg: cfg, info: info, fatal: make(chan error, 1),
		log:      cfg.Log.With("component", "master"),
		replicas: newMailbox[replicaSet]()}
	m.detector = NewDetector(cfg.ZK, cfg.SessionTimeout, m.log.With("session", "detector"))
	m.registrar = registrar{quorum: cfg.Quorum, replicas: func() []replicaMember { return distinctReplicas(m.replicas.get().Members) }}
	return m, nil
}

// Info is the MasterInfo this master contends with.
func (m *Master) Info() MasterInfo { return m.info }

// Run serves until ctx ends (it then closes its sessions, so its znodes go
// at once, and returns nil) or until a condition on which Mesos exits: it
// then returns an *ExitError at once, leaving its sessions to expire.
func (m *Master) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	srv := &http.Server{Handler: m.mux(), ReadHeaderTimeout: 5 * time.Second}
	stop := func() {
		cancel()
		srv.Close()
		wg.Wait()
	}
	wg.Add(3)
	go func() { defer wg.Done(); _ = srv.Serve(m.cfg.Listener) }()
	go func() { defer wg.Done(); m.detector.Run(ctx) }()
	upid := replicaUPID(m.info.Address.IP, m.info.Port)
	go func() {
		defer wg.Done()
		replicaNetwork(ctx, m.cfg.ZK, m.cfg.SessionTimeout, m.log.With("session", "log"), upid, m.replicas)
	}()
	data, _ := json.Marshal(m.info)
	joined, lost := make(chan string, 1), make(chan error, 1)
	startContender := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			contend(ctx, m.cfg.ZK, m.cfg.SessionTimeout, m.log.With("session", "contender"), data, joined, lost)
		}()
	}
	startContender()
	m.log.Info("master started", "id", m.info.ID, "pid", m.info.PID, "zk", m.cfg.ZK.String(), "quorum", m.cfg.Quorum,
		"zk_session_timeout", m.cfg.SessionTimeout.String())
	recovered := make(chan error, 1)
	for {
		select {
		case <-ctx.Done():
			m.log.Info("master shutting down")
			stop()
			return nil
		case node := <-joined:
			m.log.Info("contending for leadership", "node", m.cfg.ZK.Path+"/"+node)
		case err := <-lost:
			if m.elected() {
				return m.exit("Lost leadership... committing suicide!", err)
			}
			m.log.Warn("Lost candidacy as a follower... Contend again", "err", err.Error())
			startContender()
		case <-m.detector.Changed():
			l := m.detector.Leader()
			switch {
			case l != nil && l.ID == m.info.ID && !m.elected():
				m.mu.Lock()
				m.electing = true
				m.mu.Unlock()
				m.log.Info("Elected as the leading master!")
				wg.Add(1)
				go func() { defer wg.Done(); recovered <- m.recover(ctx, &wg) }()
			case (l == nil || l.ID != m.info.ID) && m.elected():
				leader := "none"
				if l != nil {
					leader = l.PID
				}
				return m.exit("Lost leadership... committing suicide!", fmt.Errorf("the leading master is now %s", leader))
			case l != nil && l.ID != m.info.ID:
				m.log.Info("following the leading master", "leader", l.PID)
			}
		case err := <-recovered:
			if err != nil && ctx.Err() == nil {
				return m.exit("Recovery failed", err)
			}
		case <-m.replicas.changed():
			if err := m.checkQuorumRule(); err != nil {
				return m.exit("Refusing to run more log replicas than --quorum allows", err)
			}
		case err := <-m.fatal:
			return m.exit("Registrar aborting", err)
		}
	}
}

func (m *Master) exit(reason string, err error) error {
	m.log.Error(reason, "err", err.Error(), "exit_code", 1)
	return &ExitError{Reason: reason, Err: err}
}

func (m *Master) elected() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.electing
}

func (m *Master) current() *leader {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leader
}

// checkQuorumRule enforces --quorum over log_replicas/: with quorum q at
// most 2q-1 replicas may exist, or two disjoint quorums could write the
// log. Replicas are counted by UPID (a restarted master's previous znode,
// still waiting for its session to expire, is the same replica); the
// replicas beyond 2q-1 in sequence order (the newest) exit.
func (m *Master) checkQuorumRule() error {
	set := m.replicas.get()
	if set.Own == "" {
		return nil
	}
	members := distinctReplicas(set.Members)
	limit := 2*m.cfg.Quorum - 1
	own := replicaUPID(m.info.Address.IP, m.info.Port)
	for i, r := range members {
		if r.UPID == own && i >= limit {
			return fmt.Errorf("log_replicas has %d replicas and --quorum=%d allows at most %d; ours (%s) is number %d: "+
				"running more masters than the quorum allows can corrupt the replicated log. Stop an old master before "+
				"starting a new one (masters move one for one), or raise --quorum on every master",
				len(members), m.cfg.Quorum, limit, set.Own, i+1)
		}
	}
	return nil
}

// distinctReplicas keeps the first znode of every UPID, in sequence order.
func distinctReplicas(members []replicaMember) []replicaMember {
	seen := map[string]bool{}
	var out []replicaMember
	for _, r := range members {
		if !seen[r.UPID] {
			seen[r.UPID] = true
			out = append(out, r)
		}
	}
	return out
}

// recover is the elected master's registrar recovery: fetch the registry
// from a quorum of replicas within --registry_fetch_timeout, write it back
// (which also catches new replicas up), then lead.
func (m *Master) recover(ctx context.Context, wg *sync.WaitGroup) error {
	reg, err := m.registrar.fetch(ctx, m.cfg.RegistryFetchTimeout)
	if err != nil {
		return fmt.Errorf("failed to recover registrar: %w", err)
	}
	reg.Version++
	if err := m.registrar.store(ctx, reg, m.cfg.RegistryStoreTimeout); err != nil {
		return fmt.Errorf("failed to recover registrar: %w", err)
	}
	l := newLeader(ctx, m, wg, reg)
	m.mu.Lock()
	m.leader = l
	m.mu.Unlock()
	m.log.Info("recovered; leading", "registry_version", reg.Version, "machines_in_maintenance", len(reg.Machines),
		"gone_agents", len(reg.Gone))
	return nil
}

func (m *Master) reportFatal(err error) {
	select {
	case m.fatal <- err:
	default:
	}
}
