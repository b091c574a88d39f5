package mesosim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/zk-migrate/zk-migrate/mesosim/czk"
)

// ErrMembershipLost means a master's candidacy ended: its session expired
// or its json.info_ znode was deleted.
var ErrMembershipLost = errors.New("mesosim: membership lost")

// contend is Mesos' ZooKeeperMasterContender on its own session: it
// creates the ephemeral sequential json.info_ znode holding info and
// watches it. It sends the created node's name to joined, then exactly
// one error to lost (wrapping ErrMembershipLost) unless ctx ends first;
// it closes its session before returning.
func contend(ctx context.Context, url ZKURL, timeout time.Duration, log *slog.Logger, data []byte,
	joined chan<- string, lost chan<- error) {
	s, err := openSession(ctx, "contender", url, timeout, log)
	if err != nil {
		return
	}
	defer s.close()
	node, err := join(ctx, s, url.Path, masterPrefix, data)
	if err != nil {
		send(ctx, lost, fmt.Errorf("%w: %v", ErrMembershipLost, err))
		return
	}
	send(ctx, joined, node)
	full := url.Path + "/" + node
	watch := true
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if watch {
			ok, err := s.conn.Exists(ctx, full, true)
			switch {
			case err == nil && !ok:
				send(ctx, lost, fmt.Errorf("%w: our znode %s was deleted", ErrMembershipLost, full))
				return
			case err == nil:
				watch = false
			case !retryable(err):
				log.Warn("watching our json.info_ failed; retrying", "err", err.Error())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.conn.Notify():
		case <-tick.C:
		}
		evs, err := s.poll(time.Now())
		if err != nil {
			send(ctx, lost, fmt.Errorf("%w: %v", ErrMembershipLost, err))
			return
		}
		for _, ev := range evs {
			if ev.Path == full {
				watch = true
			}
		}
	}
}

// join creates the ephemeral sequential member znode under dir (and dir),
// retrying on connection loss as Mesos' Group does.
func join(ctx context.Context, s *session, dir, prefix string, data []byte) (string, error) {
	if err := s.ensurePath(ctx, dir); err != nil {
		return "", err
	}
	for {
		created, err := s.conn.Create(ctx, dir+"/"+prefix, data, czk.EphemeralSequential, s.url.Auth != "")
		if err == nil {
			return path.Base(created), nil
		}
		if !retryable(err) {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

func send[T any](ctx context.Context, ch chan<- T, v T) {
	select {
	case ch <- v:
	case <-ctx.Done():
	}
}

// replicaMember is one znode under log_replicas/.
type replicaMember struct {
	Node string // "0000000003"
	UPID string // "log-replica(1)@127.0.0.1:5050"
}

// replicaSet is what a master's log network sees: the members of
// log_replicas/ in sequence order, and which one is its own.
type replicaSet struct {
	Members []replicaMember
	Own     string // our node, "" while not joined
}

// replicaNetwork is the membership half of Mesos' replicated log: its
// replica joins <path>/log_replicas/ (ephemeral sequential, data the
// replica's UPID) on its own session, and it follows the other members.
// When the session expires it joins again on a new session (Mesos' log
// network renews its membership the same way).
func replicaNetwork(ctx context.Context, url ZKURL, timeout time.Duration, log *slog.Logger, upid string,
	out *mailbox[replicaSet]) {
	dir := url.Path + "/log_replicas"
	for ctx.Err() == nil {
		s, err := openSession(ctx, "log", url, timeout, log)
		if err != nil {
			return
		}
		err = followReplicas(ctx, s, dir, upid, out)
		s.close()
		if ctx.Err() == nil {
			log.Warn("log replica lost its ZooKeeper membership; joining log_replicas again", "err", err.Error())
			out.put(replicaSet{})
		}
	}
}

func followReplicas(ctx context.Context, s *session, dir, upid string, out *mailbox[replicaSet]) error {
	own, err := join(ctx, s, dir, "", []byte(upid))
	if err != nil {
		return err
	}
	s.log.Info("log replica joined", "node", dir+"/"+own, "upid", upid)
	refresh := true
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if refresh {
			set, err := listReplicas(ctx, s, dir)
			if err == nil {
				refresh = false
				set.Own = own
				found := false
				for _, m := range set.Members {
					found = found || m.Node == own
				}
				if !found {
					return fmt.Errorf("%w: our replica znode %s/%s was deleted", ErrMembershipLost, dir, own)
				}
				out.put(set)
			} else if !retryable(err) {
				s.log.Warn("listing log_replicas failed; retrying", "err", err.Error())
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

func listReplicas(ctx context.Context, s *session, dir string) (replicaSet, error) {
	kids, err := s.conn.Children(ctx, dir, true)
	if err != nil {
		return replicaSet{}, err
	}
	var set replicaSet
	for _, k := range sortedSequential(kids, "") {
		data, _, err := s.conn.Get(ctx, dir+"/"+k, false)
		if czk.IsCode(err, czk.ErrNoNode) {
			continue
		}
		if err != nil {
			return replicaSet{}, err
		}
		set.Members = append(set.Members, replicaMember{Node: k, UPID: string(data)})
	}
	return set, nil
}
