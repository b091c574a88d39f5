package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/control"
)

// auditCommand prints, exports and verifies the audit trail.
func auditCommand() *cli.Command {
	return &cli.Command{
		Name:  "audit",
		Usage: "print the audit trail (who did what, when, with what result; --migration: only its entries)",
		Description: `Every entry is hash-chained to the one before it (seq, prev_hash, hash:
hash = SHA-256(prev_hash + the entry's canonical JSON)). --output json
exports JSON lines, one entry a line, each with its seq and hashes, so the
export can be verified on its own:

   zk-migrate audit --output json > audit.jsonl
   zk-migrate audit verify --file audit.jsonl                # the file alone
   zk-migrate audit verify --file audit.jsonl --against-api  # and against the control plane
   zk-migrate audit verify                                   # the live trail

A --migration export is a filtered view: it does not verify as a chain.`,
		Flags: apiFlags(),
		Action: func(c *cli.Context) error {
			a, err := newAPIClient(c)
			if err != nil {
				return err
			}
			entries, err := fetchAudit(a, c.String("migration"))
			if err != nil {
				return err
			}
			if a.json { // JSON lines: one entry per line
				for _, e := range entries { // the one form audit verify accepts
					if _, err := a.out.Write(append(e.ExportJSON(), '\n')); err != nil {
						return err
					}
				}
				return nil
			}
			for _, e := range entries {
				fmt.Fprintf(a.out, "%s %-10s %-14s %-12s %s %s\n", e.Time.Format(time.RFC3339), e.By, e.Action, e.Migration, e.Detail, e.Result)
			}
			return nil
		},
		Subcommands: []*cli.Command{auditVerifyCommand()},
	}
}

func fetchAudit(a *apiClient, migration string) ([]control.AuditEntry, error) {
	path := "/api/v1/audit"
	if migration != "" {
		path += "?migration=" + url.QueryEscape(migration)
	}
	var entries []control.AuditEntry
	if err := a.do(http.MethodGet, path, nil, &entries); err != nil {
		return nil, err
	}
	return entries, nil
}

func auditVerifyCommand() *cli.Command {
	var flags []cli.Flag
	for _, f := range apiFlags() {
		if n := f.Names()[0]; n != "migration" && n != "output" {
			flags = append(flags, f)
		}
	}
	return &cli.Command{
		Name:  "verify",
		Usage: "check that an exported (or the live) audit trail is an unbroken hash chain",
		Description: `Reads JSON lines (zk-migrate audit --output json) from --file ("-" for
stdin), or the live trail from the control plane without --file, and checks
every line: its hash matches its content (else it was edited), its seq
follows the line before (else a line was removed, or lines reordered) and
its prev_hash is the hash of the line before. The first bad line is named
with the reason.

A chain rewritten from some line to its end, or cut at either end, is
consistent on its own: --against-api also compares every line with the
control plane's entry of the same seq (while it still retains it) and
prints the live head.

Exit codes: 0 the trail verifies; 3 it does not (the first bad line is
printed); 1 the file or the control plane could not be read; 2 usage.`,
		Flags: append(flags,
			&cli.StringFlag{Name: "file", Usage: "the exported JSON lines (- for stdin); default: the live trail"},
			&cli.BoolFlag{Name: "against-api", Usage: "also compare the file with the control plane's trail (--api, --token)"}),
		Action: runAuditVerify,
	}
}

func runAuditVerify(c *cli.Context) error {
	out := c.App.Writer
	file := c.String("file")
	if file == "" && c.Bool("against-api") {
		return usageError("--against-api compares a --file with the control plane: give --file")
	}
	if file == "-" && c.Bool("against-api") {
		return usageError("--against-api reads the file twice: give a file, not stdin")
	}
	var entries []control.AuditEntry
	var sum control.AuditSummary
	var err error
	src := file
	if file != "" {
		var r io.Reader = os.Stdin
		if file != "-" {
			f, ferr := os.Open(file)
			if ferr != nil {
				return cli.Exit(fmt.Sprintf("audit verify: %v", ferr), exitError)
			}
			defer f.Close()
			r = f
		}
		sum, err = control.VerifyAuditLines(r)
	} else {
		src = "the live trail"
		a, aerr := newAPIClient(c)
		if aerr != nil {
			return aerr
		}
		if entries, err = fetchAudit(a, ""); err != nil {
			return err
		}
		sum, err = control.VerifyAudit(entries)
	}
	if err != nil {
		if errors.Is(err, control.ErrAuditTampered) {
			return cli.Exit(fmt.Sprintf("audit verify: %s: NOT VERIFIED: %v", src, err), exitDifferent)
		}
		return cli.Exit(fmt.Sprintf("audit verify: %s: %v", src, err), exitError)
	}
	if c.Bool("against-api") {
		a, aerr := newAPIClient(c)
		if aerr != nil {
			return aerr
		}
		live, lerr := fetchAudit(a, "")
		if lerr != nil {
			return lerr
		}
		if err := compareWithLive(file, live); err != nil {
			return cli.Exit(fmt.Sprintf("audit verify: %s: NOT VERIFIED against the control plane: %v", src, err), exitDifferent)
		}
		if n := len(live); n > 0 {
			fmt.Fprintf(out, "control plane head: seq %d hash %s\n", live[n-1].Seq, live[n-1].Hash)
		}
	}
	fmt.Fprintf(out, "%s: verified %d entries, seq %d to %d\nanchor %s\nhead   %s\n", src, sum.Entries, sum.FirstSeq, sum.LastSeq, sum.Anchor, sum.Head)
	return nil
}

// compareWithLive checks every line of the (already verified) file against
// the live entry of the same seq.
func compareWithLive(file string, live []control.AuditEntry) error {
	bySeq := make(map[uint64]string, len(live))
	for _, e := range live {
		bySeq[e.Seq] = e.Hash
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	for n := 1; ; n++ {
		var e control.AuditEntry
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if h, ok := bySeq[e.Seq]; ok && h != e.Hash {
			return fmt.Errorf("entry %d (seq %d): hash %s, the control plane holds %s for that seq: the export was rewritten", n, e.Seq, e.Hash, h)
		}
		if len(live) > 0 && e.Seq > live[len(live)-1].Seq {
			return fmt.Errorf("entry %d (seq %d): beyond the control plane's head (seq %d): not written by this control plane", n, e.Seq, live[len(live)-1].Seq)
		}
	}
}
