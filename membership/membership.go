// Package membership is zk-migrate's gossip pool (hashicorp/memberlist):
// every proxy, replicator and control node joins it and advertises its
// role, the ensemble it uses as primary, the flip epoch it holds, its
// session count and its sync lag, so the control plane knows within
// seconds which proxies are alive and which hold a stale epoch.
//
// Usage:
//
//	a, err := membership.Join(membership.Config{Name: "proxy-master1", BindAddr: "10.0.0.5:7946",
//		Seeds: []string{"10.0.0.1:7946"}, Meta: membership.Meta{Role: membership.RoleProxy, API: "http://10.0.0.5:9404"}})
//	defer a.Leave()
//	a.SetMeta(func(m *membership.Meta) { m.Epoch = 3; m.Primary = "B" })
//	for _, m := range a.Members() { ... }
package membership

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// Roles.
const (
	RoleProxy      = "proxy"
	RoleReplicator = "replicator"
	RoleControl    = "control"
)

// Meta is what a member advertises. Encoded it must stay under
// memberlist's 512-byte limit.
type Meta struct {
	Role     string        `json:"r"`
	Primary  ensemble.Name `json:"p,omitempty"` // the ensemble the member uses as primary
	Epoch    int64         `json:"e,omitempty"`
	Sessions int           `json:"s,omitempty"`
	LagMS    int64         `json:"l,omitempty"`
	// API is the member's admin endpoint (a proxy's flip endpoint).
	API string `json:"a,omitempty"`
	// LeaseMS is a two-ensemble proxy's read lease: the longest it serves
	// requests from the old primary after a flip it missed.
	LeaseMS int64 `json:"rl,omitempty"`
	// Retired is the ensemble a two-ensemble proxy has retired in phase 6
	// (it no longer mirrors to it nor holds a session there).
	Retired ensemble.Name `json:"rt,omitempty"`
}

// Member is one live member.
type Member struct {
	Name string
	Addr string
	Meta Meta
	// Seen is when this member last heard from it: its join, a metadata
	// update, or its answer to a probe (a heartbeat); for this member
	// itself, when it started.
	Seen time.Time
}

// Config configures Join.
type Config struct {
	Name string
	// BindAddr is host:port for gossip (TCP and UDP).
	BindAddr string
	// Seeds are members to join ("host:port"); none starts a new pool.
	Seeds []string
	Meta  Meta
	// Fast selects LAN timings suited to loopback tests (failures seen in
	// about a second).
	Fast bool
	// SecretKey (16, 24 or 32 bytes, LoadKey) encrypts and authenticates
	// every gossip message with AES-GCM: a member without the same key
	// cannot join the pool, read it or be seen in it. Empty: gossip in
	// clear, which zk-migrate control, proxy and sync refuse (a usage
	// error) unless --gossip-insecure is given. Members' roles and metadata
	// are self-asserted (anyone in the pool may claim Role "control" and
	// any Primary and Epoch): the key is what keeps strangers out.
	SecretKey []byte
}

// Agent is this process's membership.
type Agent struct {
	ml *memberlist.Memberlist
	d  *delegate
	ev *events
}

// events keeps a copy of the live members. memberlist calls it under its
// own lock; reading the *memberlist.Node values Members() returns would
// race with gossip updating them.
type events struct {
	mu      sync.Mutex
	members map[string]Member
}

func (e *events) set(n *memberlist.Node) {
	var m Meta
	_ = json.Unmarshal(n.Meta, &m)
	e.mu.Lock()
	e.members[n.Name] = Member{Name: n.Name, Addr: n.Address(), Meta: m, Seen: time.Now()}
	e.mu.Unlock()
}

// NotifyPingComplete records a member's answer to this member's probe:
// its last heartbeat (memberlist.PingDelegate).
func (e *events) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	e.mu.Lock()
	if m, ok := e.members[n.Name]; ok {
		m.Seen = time.Now()
		e.members[n.Name] = m
	}
	e.mu.Unlock()
}

// AckPayload sends nothing with a probe's answer (memberlist.PingDelegate).
func (e *events) AckPayload() []byte { return nil }

func (e *events) NotifyJoin(n *memberlist.Node)   { e.set(n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.set(n) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.mu.Lock()
	delete(e.members, n.Name)
	e.mu.Unlock()
}

type delegate struct {
	mu   sync.Mutex
	meta Meta
}

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, _ := json.Marshal(d.meta)
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// Join creates the agent and joins the seeds.
func Join(cfg Config) (*Agent, error) {
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("membership: bind address %q: %w", cfg.BindAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("membership: bind port %q: %w", portStr, err)
	}
	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.SuspicionMult = 2
		mc.GossipInterval = 50 * time.Millisecond
		// Gossip is UDP: a loaded machine drops datagrams, and a lost
		// meta update would otherwise wait for the next full state
		// exchange (15 s in the local config). Exchange often over TCP.
		mc.PushPullInterval = 500 * time.Millisecond
	}
	mc.Name = cfg.Name
	if len(cfg.SecretKey) > 0 {
		mc.SecretKey = cfg.SecretKey
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	d := &delegate{meta: cfg.Meta}
	mc.Delegate = d
	ev := &events{members: map[string]Member{}}
	mc.Events = ev
	mc.Ping = ev
	mc.Logger = log.New(io.Discard, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start on %s: %w", cfg.BindAddr, err)
	}
	if len(cfg.Seeds) > 0 {
		// Members start in any order (systemd starts the proxies and the
		// control nodes side by side): a seed that refuses the connection
		// is not up yet, so ask again for a while. Any other failure (a
		// wrong gossip key) is final at once.
		deadline := time.Now().Add(seedWait)
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
			_, err := ml.Join(cfg.Seeds)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "connection refused") || time.Now().Add(backoff).After(deadline) {
				_ = ml.Shutdown()
				return nil, fmt.Errorf("membership: join %v: %w", cfg.Seeds, err)
			}
			time.Sleep(backoff)
		}
	}
	return &Agent{ml: ml, d: d, ev: ev}, nil
}

// seedWait is how long Join asks again while every seed refuses the
// connection (not started yet).
const seedWait = 20 * time.Second

// SetMeta changes what this member advertises and gossips it.
func (a *Agent) SetMeta(change func(*Meta)) error {
	a.d.mu.Lock()
	change(&a.d.meta)
	a.d.mu.Unlock()
	return a.ml.UpdateNode(5 * time.Second)
}

// Members lists the live members (this one included), by name.
func (a *Agent) Members() []Member {
	a.ev.mu.Lock()
	defer a.ev.mu.Unlock()
	out := make([]Member, 0, len(a.ev.members))
	for _, m := range a.ev.members {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Leave announces departure and stops.
func (a *Agent) Leave() error {
	_ = a.ml.Leave(2 * time.Second)
	return a.ml.Shutdown()
}

// Kill stops without announcing (a crash, for tests).
func (a *Agent) Kill() error { return a.ml.Shutdown() }
