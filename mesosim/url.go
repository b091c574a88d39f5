package mesosim

import (
	"fmt"
	"net"
	"strings"
)

// ZKURL is a Mesos --zk / --master value: zk://[user:password@]host:port[,host:port...]/path.
type ZKURL struct {
	Hosts string // "h1:p1,h2:p2", as the C client takes them
	Path  string // "/mesos"
	Auth  string // "user:password" (digest), or empty
}

// ParseZKURL parses a zk:// URL the way Mesos' zookeeper::URL does.
func ParseZKURL(s string) (ZKURL, error) {
	const scheme = "zk://"
	if !strings.HasPrefix(s, scheme) {
		return ZKURL{}, fmt.Errorf("mesosim: %q is not a zk:// URL (want zk://host:port[,host:port]/path)", s)
	}
	rest := s[len(scheme):]
	var u ZKURL
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		u.Auth, rest = rest[:at], rest[at+1:]
		if !strings.Contains(u.Auth, ":") {
			return ZKURL{}, fmt.Errorf("mesosim: credentials in %q must be user:password", s)
		}
	}
	slash := strings.Index(rest, "/")
	if slash < 0 || slash == len(rest)-1 {
		return ZKURL{}, fmt.Errorf("mesosim: %q has no path (want zk://host:port/mesos)", s)
	}
	u.Hosts, u.Path = rest[:slash], strings.TrimRight(rest[slash:], "/")
	for _, h := range strings.Split(u.Hosts, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			return ZKURL{}, fmt.Errorf("mesosim: host %q in %q: %w", h, s, err)
		}
	}
	return u, nil
}

// String is the URL with the password masked.
func (u ZKURL) String() string {
	auth := ""
	if u.Auth != "" {
		auth = strings.SplitN(u.Auth, ":", 2)[0] + ":***@"
	}
	return "zk://" + auth + u.Hosts + u.Path
}
