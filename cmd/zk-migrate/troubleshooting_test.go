package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// verb is a fmt verb in a message format.
var verb = regexp.MustCompile(`%[-+# 0-9.]*[a-zA-Z%]`)

// messageKey is the longest constant part of a message format (what a user
// sees whatever the values), or "" when none is long enough to search for.
func messageKey(format string) string {
	best := ""
	for _, part := range verb.Split(format, -1) {
		part = strings.Trim(part, " :;,.()\"'")
		if len(part) > len(best) {
			best = part
		}
	}
	if len(best) < 12 {
		return ""
	}
	return best
}

// literal is the format string an expression starts with: a string
// literal, "lit" + ..., or fmt.Sprintf("lit", ...).
func literal(e ast.Expr) (string, bool) {
	switch x := e.(type) {
	case *ast.BasicLit:
		if x.Kind == token.STRING {
			s, err := strconv.Unquote(x.Value)
			return s, err == nil
		}
	case *ast.BinaryExpr:
		return literal(x.X)
	case *ast.CallExpr:
		if sel, ok := x.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Sprintf" && len(x.Args) > 0 {
			return literal(x.Args[0])
		}
	}
	return "", false
}

// printedMessages lists the messages the tool prints on its own account:
// every usage error and cli.Exit of the binary, every API error the
// control node answers (the CLI prints them), and the control plane's
// sentinel errors (which those carry), read from the source.
func printedMessages(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{} // key -> where
	fset := token.NewFileSet()
	add := func(e ast.Expr) {
		if s, ok := literal(e); ok {
			if k := messageKey(s); k != "" {
				out[k] = fset.Position(e.Pos()).String()
			}
		}
	}
	for _, glob := range []string{"*.go", "../../control/server/*.go", "../../control/state.go", "../../raftstore/members.go", "../../raftstore/store.go"} {
		files, _ := filepath.Glob(glob)
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.CallExpr:
					var name string
					switch fn := x.Fun.(type) {
					case *ast.Ident:
						name = fn.Name
					case *ast.SelectorExpr:
						if id, ok := fn.X.(*ast.Ident); ok {
							name = id.Name + "." + fn.Sel.Name
						}
					}
					switch {
					case name == "usageError" && len(x.Args) > 0, name == "cli.Exit" && len(x.Args) > 0:
						add(x.Args[0])
					case name == "errors.New" && len(x.Args) > 0 && !strings.Contains(f, "cmd"):
						add(x.Args[0])
					}
				case *ast.CompositeLit:
					if id, ok := x.Type.(*ast.Ident); ok && id.Name == "apiError" && len(x.Elts) > 0 {
						add(x.Elts[0])
					}
				}
				return true
			})
		}
	}
	return out
}

// TestTroubleshootingListsEveryMessage: docs/troubleshooting.md names every
// message the tool prints on its own account (printedMessages), so a user
// who searches the page for what they saw finds its cause and fix.
func TestTroubleshootingListsEveryMessage(t *testing.T) {
	b, err := os.ReadFile("../../docs/troubleshooting.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	msgs := printedMessages(t)
	if len(msgs) < 50 {
		t.Fatalf("found only %d messages in the source: the extraction is broken", len(msgs))
	}
	var missing []string
	for k, where := range msgs {
		if !strings.Contains(doc, k) {
			missing = append(missing, where+": "+k)
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("docs/troubleshooting.md does not name the message %s", m)
	}
}
