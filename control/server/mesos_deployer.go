package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
)

// deployerCheckTimeout bounds the pre-flight's deployer check.
const deployerCheckTimeout = 2 * time.Minute

// checkDeployer asks the deployer whether each master and agent of the
// mesos section runs, as phases 2 to 6 will: for kind systemd that is
// `systemctl is-active` over SSH on every host, so a refused key, an
// unknown host key, sudo asking for a password or systemctl refused fail
// the pre-flight, before phase 1 touches anything, instead of failing
// phase 2 after the flip. Up to 8 hosts are asked at a time.
func checkDeployer(ctx context.Context, m *control.Mesos) error {
	dep, err := NewDeployer(m)
	if err != nil {
		return err
	}
	c := newMesosCluster(m, dep, nil)
	var all []deployer.Process
	for i := range 2 {
		all = append(append(all, c.masters[i]...), c.agents[i]...)
	}
	ctx, cancel := context.WithTimeout(ctx, deployerCheckTimeout)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 8)
	)
	for _, p := range all {
		wg.Add(1)
		sem <- struct{}{}
		go func() { // ends when Running returns (bounded by ctx)
			defer func() { <-sem; wg.Done() }()
			if _, err := dep.Running(ctx, p); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("the deployer (mesos.deployer.kind %s) cannot tell whether %d of %d Mesos processes run: %w",
			m.Deployer.Kind, len(errs), len(all), errors.Join(errs...))
	}
	return nil
}
