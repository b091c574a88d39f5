package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
)

// Refusals is implemented by the error a ProxyFleet or BarrierFleet call
// returns (as is or wrapped) when proxies answered but did not do the
// step: unlike a proxy that does not answer (dead, hung, partitioned),
// such a proxy is alive and serving its clients, so raising the fence
// over it would refuse their next writes (SPEC.md 4.10). The barrier
// holds it again; it is fenced only when it does not answer at all.
// membership.RefusedError is one.
type Refusals interface {
	error
	// Refused maps each proxy that answered but did not do the step to
	// its answer (status and reason: "503: drain: ...").
	Refused() map[string]string
}

// ErrProxyCouldNotHold is a flip stopped before any fence was raised
// because a live proxy answered the barrier but could not hold its
// clients (its drain did not finish within its pause budget, or it
// refused the request), however many times it was asked.
var ErrProxyCouldNotHold = errors.New("control: a live proxy answered the flip barrier but could not hold its clients")

// couldNotHoldHint is the remediation of ErrProxyCouldNotHold.
const couldNotHoldHint = "no fence was raised (fencing a live proxy refuses its clients' writes); " +
	"fix: a 503 names the request that stayed in flight past the proxy's pause budget (a third of its shortest session timeout): " +
	"find it in that proxy's log (a slow or loaded ensemble), a 401 means its --admin-token-file differs from the control nodes' --proxy-token-file, " +
	"a 409 that it holds another epoch; then flip again (zk-migrate advance --phase flip, or the rollback goes on by itself), " +
	"or stop that proxy (it leaves the gossip pool, and the barrier fences it)"

// maxRefusedRetries bounds how many times a proxy that answered but could
// not hold (or swap) is asked again at one epoch.
const maxRefusedRetries = 3

// refusedBy returns the proxies err names as having answered but not done
// the step (nil if none).
func refusedBy(err error) map[string]string {
	var r Refusals
	if errors.As(err, &r) {
		return r.Refused()
	}
	return nil
}

// describeRefusals lists proxies and their answers, sorted by name.
func describeRefusals(refused map[string]string) string {
	names := make([]string, 0, len(refused))
	for p := range refused {
		names = append(names, p)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, p := range names {
		parts[i] = p + " (" + refused[p] + ")"
	}
	return strings.Join(parts, ", ")
}

// refusedAndHeld is the set of proxies that answered a hold: those that
// hold, and those that refused it (a release changes nothing for them).
func refusedAndHeld(held []string, refused map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, p := range held {
		out[p] = true
	}
	for p := range refused {
		out[p] = true
	}
	return out
}

// retryCounter counts, per migration, epoch and kind of failure, the
// barriers tried again at one epoch; and, for a rollback held up by a
// proxy that keeps refusing, when it may hold again.
type retryCounter struct {
	mu    sync.Mutex
	tries map[string]int
	// notBefore: after the retries ran out on a reverse flip, holding
	// again (a pause for every client) waits until then.
	notBefore map[string]time.Time
	last      map[string]error
}

// next reports whether one more try is allowed for key (up to max) and
// counts it, with the try's number.
func (r *retryCounter) next(key string, max int) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tries == nil {
		r.tries = map[string]int{}
	}
	if r.tries[key] >= max {
		return r.tries[key], false
	}
	r.tries[key]++
	return r.tries[key], true
}

// coolDown starts a wait before key is tried again, with why as its
// reason, and resets its count.
func (r *retryCounter) coolDown(key string, d time.Duration, why error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.notBefore == nil {
		r.notBefore, r.last = map[string]time.Time{}, map[string]error{}
	}
	r.notBefore[key], r.last[key] = time.Now().Add(d), why
	delete(r.tries, key)
}

// coolingDown returns the reason key waits, while it does.
func (r *retryCounter) coolingDown(key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Now().Before(r.notBefore[key]) {
		return r.last[key]
	}
	return nil
}

func retryKey(migration string, epoch int64, kind string) string {
	return fmt.Sprintf("%s/%d/%s", migration, epoch, kind)
}

// retryHold reports whether a barrier whose guard failed with err is tried
// again (the proxies were released; the next pass holds them again): when
// the guard ran out of time rather than found a problem (a slow read of a
// loaded ensemble while the clients wait), up to maxHoldRetries times per
// epoch. A problem it found (digests differ, a conflict, lag) aborts at
// once.
func (e *Executor) retryHold(migration string, epoch int64, err error) bool {
	var ne net.Error
	timedOut := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errHoldExpired) || errors.As(err, &ne) && ne.Timeout()
	if !timedOut {
		return false
	}
	try, ok := e.retries.next(retryKey(migration, epoch, "guard"), maxHoldRetries)
	if !ok {
		return false
	}
	e.Logger.Warn("flip barrier: the guard did not finish within the proxies' hold budget; released them, holding again",
		"migration", migration, "epoch", epoch, "try", try, "of", maxHoldRetries, "err", err)
	return true
}

// retryRefused reports whether a barrier some of whose proxies answered
// the hold but could not hold (refused) is tried again at the same epoch
// (the caller released every hold; the next pass holds them all again),
// up to maxRefusedRetries times per epoch and kind ("hold", "reverse").
func (e *Executor) retryRefused(migration string, epoch int64, kind string, refused map[string]string) bool {
	try, ok := e.retries.next(retryKey(migration, epoch, kind), maxRefusedRetries)
	if !ok {
		return false
	}
	e.Logger.Warn("flip barrier: proxies answered the hold but could not hold their clients (they are alive: not fenced); released every hold, holding again",
		"migration", migration, "epoch", epoch, "proxies", describeRefusals(refused), "try", try, "of", maxRefusedRetries)
	return true
}
