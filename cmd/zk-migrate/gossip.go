package main

import (
	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/membership"
)

// gossipKeyFlag is --gossip-key-file, the same on control, proxy and sync.
func gossipKeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "gossip-key-file", EnvVars: []string{"ZKM_GOSSIP_KEY_FILE"},
		Usage: "shared gossip key (base64 of 32 random bytes, mode 600): encrypts and authenticates the pool; members without it are not in it"}
}

// gossipInsecureFlag is --gossip-insecure, the same on control, proxy and
// sync: the only way to run the pool without a key.
func gossipInsecureFlag() cli.Flag {
	return &cli.BoolFlag{Name: "gossip-insecure",
		Usage: "run the gossip pool in clear, without --gossip-key-file (tests and trials only: anyone who reaches a gossip port can join, claim any role and move proxies' primary)"}
}

// gossipKey loads --gossip-key-file (a usage error if it is unusable).
// --gossip-addr without a key is a usage error unless --gossip-insecure
// is given: members' roles are self-asserted, so the key is what keeps
// strangers (a rogue "control" member announcing another primary) out of
// the pool. An insecure pool is said loudly in the log.
func gossipKey(c *cli.Context) ([]byte, error) {
	path := c.String("gossip-key-file")
	if path == "" {
		if !c.Bool("gossip-insecure") {
			return nil, usageError("--gossip-addr needs --gossip-key-file: without a key anyone who can reach the gossip port can join the pool, "+
				"claim to be a control node and switch proxies' primary (%s); --gossip-insecure runs it in clear anyway, for tests and trials only", membership.KeyHint)
		}
		log, _ := newLogger("info")
		log.Warn("gossip in clear (--gossip-insecure): anyone who can reach --gossip-addr can join the pool and take part in flips; pass --gossip-key-file",
			"hint", membership.KeyHint)
		return nil, nil
	}
	key, err := membership.LoadKey(path)
	if err != nil {
		return nil, usageError("--gossip-key-file: %v", err)
	}
	return key, nil
}
