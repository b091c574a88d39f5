package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/control/server"
)

// TestReferenceDocumentsEveryRouteCommandAndFlag keeps docs/reference.md in
// step with the code: every route the control node's router registers is
// a row of the REST table, every command of the CLI app (subcommands
// included) has a section, and every flag of a command is a row of its
// section; and the page names no route, command or flag that does not
// exist.
func TestReferenceDocumentsEveryRouteCommandAndFlag(t *testing.T) {
	b, err := os.ReadFile("../../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)

	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:GET|POST|PUT|PATCH|DELETE) [^`]+)` \\|").FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	routes := server.Routes()
	for _, r := range routes {
		if !documented[r] {
			t.Errorf("route %q is not in docs/reference.md's REST table", r)
		}
	}
	for r := range documented {
		if !slices.Contains(routes, r) {
			t.Errorf("docs/reference.md documents route %q, which the router does not register", r)
		}
	}

	sections := map[string]string{} // "zk-migrate node list" -> its text
	heads := regexp.MustCompile("(?m)^### `(zk-migrate[^`]*)`\\s*$")
	idx := heads.FindAllStringSubmatchIndex(doc, -1)
	for i, m := range idx {
		end := len(doc)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		sections[doc[m[2]:m[3]]] = doc[m[1]:end]
	}
	seen := map[string]bool{}
	flagRow := regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\|")
	var walk func(prefix string, cs []*cli.Command)
	walk = func(prefix string, cs []*cli.Command) {
		for _, c := range cs {
			name := prefix + " " + c.Name
			seen[name] = true
			sec, ok := sections[name]
			if !ok {
				t.Errorf("command %q has no section (### `%s`) in docs/reference.md", name, name)
				continue
			}
			var flags []string
			for _, f := range c.Flags {
				flags = append(flags, f.Names()[0])
				if !strings.Contains(sec, "| `--"+f.Names()[0]+"` |") {
					t.Errorf("%s: flag --%s is not documented in its section of docs/reference.md", name, f.Names()[0])
				}
			}
			for _, m := range flagRow.FindAllStringSubmatch(sec, -1) {
				if !slices.Contains(flags, m[1]) {
					t.Errorf("docs/reference.md documents %s --%s, which the command does not have", name, m[1])
				}
			}
			walk(name, c.Subcommands)
		}
	}
	walk("zk-migrate", newApp().Commands)
	for name := range sections {
		if !seen[name] {
			t.Errorf("docs/reference.md has a section for %q, which is not a command", name)
		}
	}
}
