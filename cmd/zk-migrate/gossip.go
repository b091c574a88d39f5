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

// gossipKey loads --gossip-key-file (a usage error if it is unusable).
// Without one the pool runs in clear, and anyone who reaches the gossip
// port can join it: that is said loudly in the log.
func gossipKey(c *cli.Context) ([]byte, error) {
	path := c.String("gossip-key-file")
	if path == "" {
		log, _ := newLogger("info")
		log.Warn("gossip in clear: anyone who can reach --gossip-addr can join the pool and take part in flips; pass --gossip-key-file",
			"hint", membership.KeyHint)
		return nil, nil
	}
	key, err := membership.LoadKey(path)
	if err != nil {
		return nil, usageError("--gossip-key-file: %v", err)
	}
	return key, nil
}
