package control

import (
	"cmp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// secretField reports whether a migration.yaml field holds a secret whose
// value must never appear in an error: sync.auth credentials, the Slack
// webhook URL (its path is the credential) and the PagerDuty routing key.
func secretField(field string) bool {
	return field == "sync.auth" || strings.HasPrefix(field, "sync.auth[") ||
		field == "alerts.slack_webhook" || field == "alerts.pagerduty_routing_key"
}

// shownValue is what an error may show of field's value v: v itself, or
// for a secret only that it is set (and a URL's scheme, which is what is
// usually wrong).
func shownValue(field, v string) string {
	if !secretField(field) || v == "" {
		return v
	}
	if scheme, _, ok := strings.Cut(v, "://"); ok && field == "alerts.slack_webhook" && len(scheme) <= 10 {
		return scheme + "://" + Redacted
	}
	return Redacted
}

// redactDecodeError removes from msg (a YAML decoding error) the values of
// the secret fields in doc: yaml.v3 quotes a value it cannot decode, in
// full up to 10 bytes and as its first 7 bytes and "..." beyond.
func redactDecodeError(msg string, doc *yaml.Node) string {
	var secrets []string
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if path != "" {
					k = path + "." + k
				}
				walk(n.Content[i+1], k)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, path+"[]")
			}
		case yaml.ScalarNode:
			if secretField(strings.TrimSuffix(path, "[]")) && n.Value != "" {
				secrets = append(secrets, n.Value)
			}
		}
	}
	walk(doc, "")
	slices.SortFunc(secrets, func(a, b string) int { return cmp.Compare(len(b), len(a)) }) // longest first
	for _, v := range secrets {
		msg = strings.ReplaceAll(msg, v, Redacted)
		if len(v) > 7 {
			msg = strings.ReplaceAll(msg, "`"+v[:7]+"...`", "`"+Redacted+"`")
		}
	}
	return msg
}
