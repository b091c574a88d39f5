package proxy_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestFlipWhileAClientReopensItsSession: a client whose connection was
// closed (a ZooKeeper server died with its write in flight: ConnectionLoss)
// re-opens its session at once, while flips go on. The session is then
// between two relays: the old one shut down, the new one not yet
// registered. A flip in that window must not leave it behind: re-opened
// after the flip on the new primary with the old primary's session id, it
// would be answered "expired" (found by the flip scenario under faults,
// cmd/zk-migrate TestFlipScenarioUnderFaults).
func TestFlipWhileAClientReopensItsSession(t *testing.T) {
	root := testRoot(t)
	p, _ := startDualProxy(t, root)
	first, resp := rawConnect(t, p.Addr, 0, nil, 0)
	id, pw := resp.SessionID, append([]byte(nil), resp.Passwd...)
	first.get(root)
	last := first.zxid
	first.conn.Close()
	waitMirrored(t, p)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	flips := 0
	wg.Add(1)
	go func() { // flips back and forth until stop
		defer wg.Done()
		for epoch := int64(1); ; epoch++ {
			select {
			case <-stop:
				return
			default:
			}
			primary := ensemble.Target
			if epoch%2 == 0 {
				primary = ensemble.Source
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if err := p.Flip(ctx, epoch, primary); err == nil {
				mu.Lock()
				flips++
				mu.Unlock()
			}
			cancel()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for i := 0; i < 300; i++ {
		rc, resp := rawConnect(t, p.Addr, id, pw, last)
		if resp.SessionID != id {
			mu.Lock()
			n := flips
			mu.Unlock()
			t.Fatalf("re-open %d (after %d flips): session 0x%x answered expired (id 0x%x, timeout %d)", i, n, id, resp.SessionID, resp.TimeOut)
		}
		rc.get(root)
		last = rc.zxid
		rc.conn.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if flips < 10 {
		t.Fatalf("only %d flips happened during the re-opens", flips)
	}
	t.Logf("300 re-opens during %d flips", flips)
}
