package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/zk-migrate/zk-migrate/control"
)

// MigrationReport is what the migration demo measured in its run.
type MigrationReport struct {
	Dir        string // logs of every process
	RolledBack bool   // rolled back to phase 1 instead of finishing
	Completed  bool   // reached phase 5 (or phase 1 again after the rollback)
	// Phase6Skipped says why phase 6 did not run ("" if it ran).
	Phase6Skipped string
	Elapsed       time.Duration
	// Steps from the control plane's report: each phase's working time.
	Steps []control.StepReport
	// FlipPauses: for each flip (a rollback across the flip is a second),
	// the longest time a proxy held its clients' requests (its "flip done"
	// log line). ProbeSlowest: the slowest write the probe client saw.
	FlipPauses    []time.Duration
	ProbeSlowest  time.Duration
	ProbeWrites   int64
	ProbeErrors   int64
	ProbeConnLoss int64 // writes whose connection closed under them (a server killed): retried
	// Sync lag: the replicator's (control plane, largest sample) and the
	// proxies' mirror (write acknowledged on the primary to verified on
	// the secondary: mean, and the bucket bound under which 99% fell).
	SyncLagMax             time.Duration
	SyncLagSamples         int
	MirrorMean, MirrorP99  time.Duration
	MirroredWrites         int64
	TasksRunning, Launched int
	TasksFailed            int
	KilledByDrain          int
	Mesos                  mesosEvents // sessions lost, disconnections, exits of the Mesos processes
	ProxyExpired           int64       // sessions the proxies expired
	ProbeExpired           int64
	ProbeDisconnects       int64
	LeaderChanges          []leaderChange
	ExpectedLeaderChanges  int
	DoubleLeaders          []string
	LeaderSamples          int
	DigestsEqual           bool
	DigestDiffs            []string
	LostWrites             int
	// DirectWrites: creates the direct writer (on A, bypassing the
	// proxies) had acknowledged; DirectMissing: those absent from A or B at
	// the end ("path on B"); DirectErrors and DirectConnLoss: its failed
	// writes (a connection closed under a write is an unknown outcome).
	DirectWrites   int
	DirectMissing  []string
	DirectErrors   int
	DirectConnLoss int64
	Errors         []string
	// Faults injected by a chaos run, with their times.
	Faults []string
	// The register workload: writes, those with an unknown outcome, the
	// porcupine verdict (Ok, Illegal, Unknown: timed out) and its time.
	RegisterOps, RegisterUnknown int
	RegisterErrors               []string
	Linearizable                 string
	LinearizeTook                time.Duration
	// Versions acknowledged twice or to no client (skipped), and each
	// anomaly naming its writes, in time order: what makes a history
	// Illegal (a skipped version is legal when a write of unknown outcome
	// accounts for it).
	RegisterDups, RegisterSkipped int
	RegisterAnomalies             []string
	RegisterStart                 time.Duration // since the demo's start

	// Retired is what phase 6 left: proxies that retired A, sessions on A.
	Retired string
}

// Unplanned counts leader changes the migration did not make on purpose.
func (r MigrationReport) Unplanned() int {
	n := 0
	for _, c := range r.LeaderChanges {
		if !c.Planned {
			n++
		}
	}
	return n
}

// OK reports whether every guarantee held, the register history's
// linearizability among them (proven: a check that timed out fails too).
func (r MigrationReport) OK() bool {
	return r.Completed && r.TasksFailed == 0 && r.Mesos.Expired == 0 && r.Mesos.Exits == 0 && r.ProxyExpired == 0 &&
		r.ProbeExpired == 0 && r.Unplanned() == 0 && len(r.LeaderChanges) == r.ExpectedLeaderChanges &&
		len(r.DoubleLeaders) == 0 && r.DigestsEqual && r.LostWrites == 0 && r.ProbeErrors == 0 && len(r.Errors) == 0 &&
		r.DirectWrites > 0 && len(r.DirectMissing) == 0 && r.DirectErrors == 0 &&
		len(r.RegisterErrors) == 0 && r.Linearizable == string(porcupine.Ok)
}

// maxAnomalies bounds the register anomalies the report lists.
const maxAnomalies = 5

// collect gathers the figures of the run into rep.
func (d *demo) collect(ctx context.Context, rep *MigrationReport, lw *leaderWatch, lags *lagSampler, pr *probe) {
	rep.Elapsed = time.Since(d.start)
	d.faultMu.Lock()
	rep.Faults = append([]string(nil), d.faultLog...)
	d.faultMu.Unlock()
	rep.Completed = true
	if cr, err := d.api.report(ctx, demoID); err == nil {
		rep.Steps = cr.Steps
	} else {
		rep.Errors = append(rep.Errors, err.Error())
	}
	var err error
	if rep.FlipPauses, err = proxyFlipPauses(d.cfg.Dir, d.proxyLogs); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	pr.mu.Lock()
	rep.ProbeSlowest = pr.slowest
	if pr.firstErr != nil {
		rep.Errors = append(rep.Errors, "probe: "+pr.firstErr.Error())
	}
	pr.mu.Unlock()
	rep.ProbeWrites, rep.ProbeErrors, rep.ProbeConnLoss = pr.writes.Load(), pr.errs.Load(), pr.connLoss.Load()
	rep.ProbeExpired, rep.ProbeDisconnects = pr.expired.Load(), pr.disconnects.Load()
	rep.SyncLagMax, rep.SyncLagSamples = lags.result()
	end, expired, err := d.mirrorStats(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	rep.ProxyExpired = expired
	// From phase 1's end: before B holds the copy, a mirrored write waits
	// for the replicator to create its parent there.
	st := end.minus(d.mirrorAtSync)
	rep.MirroredWrites = int64(st.count)
	if st.count > 0 {
		rep.MirrorMean = time.Duration(st.sum / st.count * float64(time.Second))
		for _, b := range st.buckets {
			if b.n >= 0.99*st.count {
				rep.MirrorP99 = time.Duration(b.le * float64(time.Second))
				break
			}
		}
	}
	if fw, err := readFramework(ctx, d.fwURL); err == nil {
		rep.TasksRunning, rep.Launched, rep.TasksFailed, rep.KilledByDrain = fw.Active["TASK_RUNNING"], fw.Launched, fw.Failed, fw.KilledByOthers
	} else {
		rep.Errors = append(rep.Errors, err.Error())
	}
	rep.Mesos = scanMesosLogs(d.dep.Dir, d.mesosNames())
	fw := scanMesosLogs(d.cfg.Dir, []string{"framework"})
	rep.Mesos.Expired += fw.Expired
	rep.Mesos.Disconnects += fw.Disconnects
	rep.Mesos.Exits += fw.Exits
	rep.Mesos.Examples = append(rep.Mesos.Examples, fw.Examples...)
	rep.LeaderChanges, rep.DoubleLeaders, rep.LeaderSamples = lw.result()
	switch {
	case d.cfg.RollbackAt == 0:
		rep.ExpectedLeaderChanges = 1 // phase 3: from A's last master to B's
	case d.cfg.RollbackAt == 2:
		rep.ExpectedLeaderChanges = 0 // phase 2 keeps A's leader; so does its undo
	default:
		rep.ExpectedLeaderChanges = 2 // to B in phase 3, back to A in the undo of phase 2
	}
}

// mirrorHist is the proxies' mirror_delay_seconds histogram, summed.
type mirrorHist struct {
	sum, count float64
	buckets    []bucket
}

// minus is h without what earlier held (nil: nothing).
func (h mirrorHist) minus(earlier *mirrorHist) mirrorHist {
	if earlier == nil {
		return h
	}
	out := mirrorHist{sum: h.sum - earlier.sum, count: h.count - earlier.count}
	for _, b := range h.buckets {
		for _, e := range earlier.buckets {
			if e.le == b.le {
				b.n -= e.n
			}
		}
		out.buckets = append(out.buckets, b)
	}
	return out
}

// mirrorStats scrapes every proxy: the mirror delay histogram and the
// sessions the proxies expired.
func (d *demo) mirrorStats(ctx context.Context) (mirrorHist, int64, error) {
	var h mirrorHist
	var expired int64
	var errs []error
	for _, m := range d.metrics {
		mf, err := scrape(ctx, m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		expired += int64(mf["zkmigrate_proxy_sessions_expired_total"])
		h.sum += mf["zkmigrate_proxy_mirror_delay_seconds_sum"]
		h.count += mf["zkmigrate_proxy_mirror_delay_seconds_count"]
		h.buckets = addBuckets(h.buckets, mf, "zkmigrate_proxy_mirror_delay_seconds_bucket")
	}
	// What proxies SIGKILLed by chaos had counted (their restarts count
	// from 0 again): read just before the kill.
	d.faultMu.Lock()
	for _, mf := range d.killedMetrics {
		expired += int64(mf["zkmigrate_proxy_sessions_expired_total"])
		h.sum += mf["zkmigrate_proxy_mirror_delay_seconds_sum"]
		h.count += mf["zkmigrate_proxy_mirror_delay_seconds_count"]
		h.buckets = addBuckets(h.buckets, mf, "zkmigrate_proxy_mirror_delay_seconds_bucket")
	}
	d.faultMu.Unlock()
	return h, expired, errors.Join(errs...)
}

// bucket is one cumulative histogram bucket summed over proxies.
type bucket struct {
	le float64
	n  float64
}

func addBuckets(bs []bucket, mf map[string]float64, name string) []bucket {
	for k, v := range mf {
		rest, ok := strings.CutPrefix(k, name+`{le="`)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(rest, `"}`), 64)
		if err != nil {
			continue // +Inf
		}
		found := false
		for i := range bs {
			if bs[i].le == le {
				bs[i].n += v
				found = true
			}
		}
		if !found {
			bs = append(bs, bucket{le: le, n: v})
		}
	}
	for i := 1; i < len(bs); i++ { // sorted by bound
		for j := i; j > 0 && bs[j].le < bs[j-1].le; j-- {
			bs[j], bs[j-1] = bs[j-1], bs[j]
		}
	}
	return bs
}

// scrape reads a proxy's /metrics: unlabelled samples by name, labelled
// ones by name{labels}.
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("sandbox: proxy metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] += v
	}
	return out, nil
}

func printMigrationReport(out io.Writer, r MigrationReport) {
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	title := "migration A -> B"
	if r.RolledBack {
		title = "migration A -> B, rolled back to A"
	}
	fmt.Fprintf(out, "\nmigration report (%s, %v, every figure measured in this run)\n", title, r.Elapsed.Round(time.Second))
	if len(r.Faults) > 0 {
		fmt.Fprintf(out, "  faults injected\n")
		for _, f := range r.Faults {
			fmt.Fprintf(out, "    %s\n", f)
		}
	}
	fmt.Fprintf(out, "  phases (control plane's report: time each step worked)\n")
	for _, s := range r.Steps {
		extra := ""
		if s.Failures > 0 {
			extra = fmt.Sprintf("   (%d failed attempts: %s)", s.Failures, s.LastError)
		}
		fmt.Fprintf(out, "    %-22s %8v%s\n", s.Step, s.Duration.Round(10*time.Millisecond), extra)
	}
	if r.Phase6Skipped != "" {
		fmt.Fprintf(out, "    %-22s %s\n", "6-remove-a", r.Phase6Skipped)
	}
	if r.Retired != "" {
		fmt.Fprintf(out, "  %-28s %s\n", "A retired (phase 6)", r.Retired)
	}
	fmt.Fprintf(out, "  write pause at the flip      ")
	for i, p := range r.FlipPauses {
		if i > 0 {
			fmt.Fprintf(out, ", ")
		}
		fmt.Fprintf(out, "%v", p.Round(100*time.Microsecond))
	}
	if len(r.FlipPauses) > 1 {
		fmt.Fprintf(out, "   (the flip, then the rollback's reverse flip)")
	}
	fmt.Fprintf(out, "\n                               (longest hold of client requests by a proxy)\n")
	fmt.Fprintf(out, "  slowest client write         %v   (%d writes through a proxy, %d errors, %d connection losses retried)\n",
		r.ProbeSlowest.Round(100*time.Microsecond), r.ProbeWrites, r.ProbeErrors, r.ProbeConnLoss)
	fmt.Fprintf(out, "  sync lag                     mirror mean %v, p99 <= %v (%d writes after phase 1, primary to secondary);\n"+
		"                               replicator at most %v (%d samples)\n",
		r.MirrorMean.Round(10*time.Microsecond), r.MirrorP99, r.MirroredWrites, r.SyncLagMax, r.SyncLagSamples)
	fmt.Fprintf(out, "  tasks failed                 %d   (must be 0; %d running at the end, %d launched, %d moved by drains)\n",
		r.TasksFailed, r.TasksRunning, r.Launched, r.KilledByDrain)
	fmt.Fprintf(out, "  sessions expired             %d   (must be 0: Mesos processes %d, proxies %d, probe client %d)\n",
		r.Mesos.Expired+int(r.ProxyExpired)+int(r.ProbeExpired), r.Mesos.Expired, r.ProxyExpired, r.ProbeExpired)
	fmt.Fprintf(out, "  Mesos processes exited       %d   (must be 0: a master's suicide, the quorum rule)\n", r.Mesos.Exits)
	fmt.Fprintf(out, "  ZooKeeper disconnections     %d   (seen by the Mesos processes' C clients)\n", r.Mesos.Disconnects+int(r.ProbeDisconnects))
	fmt.Fprintf(out, "  leader changes               %d   (planned %d, unplanned %d; expected %d)\n",
		len(r.LeaderChanges), len(r.LeaderChanges)-r.Unplanned(), r.Unplanned(), r.ExpectedLeaderChanges)
	for _, c := range r.LeaderChanges {
		kind := "planned"
		if !c.Planned {
			kind = "UNPLANNED"
		}
		fmt.Fprintf(out, "                               %s -> %s during %s (%s)\n", c.From, c.To, c.Step, kind)
	}
	fmt.Fprintf(out, "  two leaders at once          %d of %d samples (must be 0)\n", len(r.DoubleLeaders), r.LeaderSamples)
	eq := "EQUAL"
	if !r.DigestsEqual {
		eq = "DIFFERENT: " + strings.Join(r.DigestDiffs, "; ")
	}
	fmt.Fprintf(out, "  digests A vs B               %s\n", eq)
	fmt.Fprintf(out, "  acknowledged writes lost     %d   (must be 0)\n", r.LostWrites)
	fmt.Fprintf(out, "  direct writes lost           %d   (must be 0: %d creates on A bypassing the proxies, each on A and B at the end; %d failed, %d with unknown outcome)\n",
		len(r.DirectMissing), r.DirectWrites, r.DirectErrors, r.DirectConnLoss)
	for i, m := range r.DirectMissing {
		if i == maxAnomalies {
			fmt.Fprintf(out, "      ... and %d more\n", len(r.DirectMissing)-i)
			break
		}
		fmt.Fprintf(out, "      missing: %s\n", m)
	}
	fmt.Fprintf(out, "  register history             %s   (must be Ok; porcupine, %v: %d writes, blind and conditional, %d with unknown outcome)\n",
		r.Linearizable, r.LinearizeTook.Round(10*time.Millisecond), r.RegisterOps, r.RegisterUnknown)
	switch r.Linearizable {
	case string(porcupine.Ok):
		if r.RegisterSkipped > 0 {
			fmt.Fprintf(out, "                               %d versions acknowledged to no client: writes of unknown outcome that took effect\n", r.RegisterSkipped)
		}
	case string(porcupine.Illegal):
		fmt.Fprintf(out, "                               NOT LINEARIZABLE: %d versions acknowledged twice, %d to no client; the history is\n"+
			"                               register.jsonl, porcupine's drawing register.html, in the run's directory\n", r.RegisterDups, r.RegisterSkipped)
	default:
		fmt.Fprintf(out, "                               NOT PROVEN: the checker did not finish in its time; the history is register.jsonl\n")
	}
	if r.Linearizable != string(porcupine.Ok) {
		for i, a := range r.RegisterAnomalies {
			if i == maxAnomalies {
				fmt.Fprintf(out, "                               ... and %d more\n", len(r.RegisterAnomalies)-i)
				break
			}
			fmt.Fprintf(out, "                               %s\n", a)
		}
	}
	for _, e := range r.RegisterErrors {
		fmt.Fprintf(out, "  register error: %s\n", e)
	}
	for _, e := range r.Mesos.Examples {
		fmt.Fprintf(out, "  seen: %s\n", e)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(out, "  error: %s\n", e)
	}
	fmt.Fprintf(out, "  verdict                      %s\n  logs of every process: %s\n", verdict, r.Dir)
}
