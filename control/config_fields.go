package control

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// unknownFields reports every key of doc that Config does not have, by its
// full path and with the nearest known name when one is close:
//
//	migration.require_manual_aproval: unknown field (did you mean require_manual_approval?)
func unknownFields(doc *yaml.Node) []error {
	var errs []error
	walkFields(doc, reflect.TypeOf(Config{}), "", &errs)
	return errs
}

func walkFields(n *yaml.Node, t reflect.Type, path string, errs *[]error) {
	if n == nil {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			walkFields(c, t, path, errs)
		}
		return
	case yaml.AliasNode:
		walkFields(n.Alias, t, path, errs)
		return
	}
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return // a type mismatch: the decoder reports it
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			ft, ok := fields[k]
			if !ok {
				msg := fmt.Sprintf("%s: unknown field", join(k))
				if s := nearest(k, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %s?)", s)
				} else {
					names := make([]string, 0, len(fields))
					for f := range fields {
						names = append(names, f)
					}
					sort.Strings(names)
					msg += " (known: " + strings.Join(names, ", ") + ")"
				}
				*errs = append(*errs, fmt.Errorf("%s", msg))
				continue
			}
			walkFields(n.Content[i+1], ft, join(k), errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			walkFields(n.Content[i+1], t.Elem(), join(n.Content[i].Value), errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range n.Content {
			walkFields(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	}
}

// yamlFields maps a struct's YAML keys to their types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// nearest is the known name within a small edit distance of k, if any.
func nearest(k string, known map[string]reflect.Type) string {
	best, bestD := "", 0
	for name := range known {
		d := editDistance(k, name)
		if d <= max(2, len(name)/4) && (best == "" || d < bestD || d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
