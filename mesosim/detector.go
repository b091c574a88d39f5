package mesosim

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/mesosim/czk"
)

// masterPrefix is the name prefix of a master's membership znode.
const masterPrefix = "json.info_"

// pollInterval paces retries after connection loss and the check of the
// disconnection timer.
const pollInterval = 100 * time.Millisecond

// Detector follows the leading master as Mesos' ZooKeeperMasterDetector
// does: getChildren with a watch on the --zk path, the json.info_ child
// with the lowest sequence leads, its data is the leader's MasterInfo. It
// keeps its own session, and starts a new one when that session expires.
type Detector struct {
	url     ZKURL
	timeout time.Duration
	log     *slog.Logger
	leader  *mailbox[*MasterInfo]
}

// NewDetector returns a detector of the masters under url.Path.
func NewDetector(url ZKURL, sessionTimeout time.Duration, log *slog.Logger) *Detector {
	return &Detector{url: url, timeout: sessionTimeout, log: log, leader: newMailbox[*MasterInfo]()}
}

// Leader is the leading master last detected, nil when none.
func (d *Detector) Leader() *MasterInfo { return d.leader.get() }

// Changed is signalled when Leader changes.
func (d *Detector) Changed() <-chan struct{} { return d.leader.changed() }

// Run detects until ctx ends; it always returns nil then.
func (d *Detector) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		s, err := openSession(ctx, "detector", d.url, d.timeout, d.log)
		if err != nil {
			return nil // ctx ended
		}
		err = d.follow(ctx, s)
		s.close()
		if ctx.Err() == nil {
			d.log.Warn("detector lost its ZooKeeper session; detecting again with a new one", "err", err.Error())
		}
	}
	return nil
}

func (d *Detector) follow(ctx context.Context, s *session) error {
	var current string // znode name of the leader
	refresh := true
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if refresh {
			node, info, err := lowestMaster(ctx, s, d.url.Path)
			switch {
			case err != nil && retryable(err):
				// try again on the next tick
			case err != nil:
				d.log.Warn("detecting the leading master failed; retrying", "err", err.Error())
			default:
				refresh = false
				if node != current {
					current = node
					if info == nil {
						d.log.Info("no leading master", "zk", d.url.String())
					} else {
						d.log.Info("detected a new leading master", "leader", info.PID, "node", node)
					}
					d.leader.put(info)
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.conn.Notify():
		case <-tick.C:
		}
		evs, err := s.poll(time.Now())
		if err != nil {
			return err
		}
		for range evs {
			refresh = true
		}
	}
}

// lowestMaster lists path with a child watch (an exists watch when path
// does not exist yet) and reads the lowest json.info_ child.
func lowestMaster(ctx context.Context, s *session, path string) (string, *MasterInfo, error) {
	for {
		kids, err := s.conn.Children(ctx, path, true)
		if czk.IsCode(err, czk.ErrNoNode) {
			if ok, err := s.conn.Exists(ctx, path, true); err != nil || !ok {
				return "", nil, err
			}
			continue
		}
		if err != nil {
			return "", nil, err
		}
		masters := sortedSequential(kids, masterPrefix)
		if len(masters) == 0 {
			return "", nil, nil
		}
		data, _, err := s.conn.Get(ctx, path+"/"+masters[0], false)
		if czk.IsCode(err, czk.ErrNoNode) {
			continue // it went between the two calls
		}
		if err != nil {
			return "", nil, err
		}
		var info MasterInfo
		if err := json.Unmarshal(data, &info); err != nil {
			s.log.Error("leading master's MasterInfo is not JSON; ignoring it", "node", masters[0], "err", err.Error())
			return masters[0], nil, nil
		}
		return masters[0], &info, nil
	}
}

// sortedSequential keeps the children named prefix+sequence and orders
// them by sequence (the suffix is %010d, so a string sort is enough).
func sortedSequential(kids []string, prefix string) []string {
	var out []string
	for _, k := range kids {
		if strings.HasPrefix(k, prefix) && len(k) >= len(prefix)+10 {
			out = append(out, k)
		}
	}
	sort.Slice(out, func(i, j int) bool { return seqOf(out[i]) < seqOf(out[j]) })
	return out
}

func seqOf(name string) string { return name[len(name)-10:] }
