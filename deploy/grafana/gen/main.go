// Command gen writes the Grafana dashboards of deploy/grafana from Go code
// (github.com/grafana/grafana-foundation-sdk), so that a renamed metric is
// one edit here and a stale JSON file is caught by `make verify-dashboards`.
//
// Usage:
//
//	go run ./deploy/grafana/gen -dir deploy/grafana          # make dashboards
//	go run ./deploy/grafana/gen -dir deploy/grafana -check   # make verify-dashboards
//
// With -check it writes nothing and exits 1 naming every file that differs
// from what it would generate.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	dir := flag.String("dir", "deploy/grafana", "directory of the dashboard JSON files")
	check := flag.Bool("check", false, "fail if a file differs from the generated one instead of writing it")
	flag.Parse()
	if err := run(*dir, *check); err != nil {
		fmt.Fprintln(os.Stderr, "dashboards:", err)
		os.Exit(1)
	}
}

func run(dir string, check bool) error {
	files, err := render()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var stale []string
	for _, name := range names {
		path := filepath.Join(dir, name)
		if check {
			old, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(old, files[name]) {
				stale = append(stale, path)
			}
			continue
		}
		if err := os.WriteFile(path, files[name], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if len(stale) > 0 {
		return fmt.Errorf("%v stale: run make dashboards and commit the result", stale)
	}
	return nil
}

// render builds every dashboard and returns its indented JSON by file name.
func render() (map[string][]byte, error) {
	out := map[string][]byte{}
	for name, b := range dashboards() {
		d, err := b.Build()
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", name, err)
		}
		numberPanels(&d)
		js, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", name, err)
		}
		out[name] = append(js, '\n')
	}
	return out, nil
}

// numberPanels gives rows and panels the ids 1, 2, 3... in order (the
// builder leaves them unset; Grafana links to a panel by id).
func numberPanels(d *dashboard.Dashboard) {
	id := uint32(0)
	for _, p := range d.Panels {
		id++
		switch {
		case p.Panel != nil:
			id := id
			p.Panel.Id = &id
		case p.RowPanel != nil:
			p.RowPanel.Id = id
		}
	}
}
