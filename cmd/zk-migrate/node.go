package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/control/server"
)

// nodeCommand lists and removes control-plane nodes.
func nodeCommand() *cli.Command {
	nodeFlags := func(extra ...cli.Flag) []cli.Flag {
		var fs []cli.Flag
		for _, f := range apiFlags() {
			if f.Names()[0] != "migration" {
				fs = append(fs, f)
			}
		}
		return append(fs, extra...)
	}
	return &cli.Command{
		Name:  "node",
		Usage: "list the control-plane nodes, or remove a dead one",
		Description: `A node joins with zk-migrate control --join as a non-voter and becomes a
voter once it has caught up with the leader's log (--raft-stabilization).
A dead node keeps its vote until it is removed: with three nodes one dead
node leaves no margin, so remove it (and start a replacement) promptly.

   zk-migrate node list
   zk-migrate node remove --id c3 --confirm`,
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "the Raft members: id, address, voter or not, leader", Flags: nodeFlags(),
				Action: func(c *cli.Context) error {
					a, err := newAPIClient(c)
					if err != nil {
						return err
					}
					var nodes []server.NodeInfo
					if err := a.do(http.MethodGet, "/api/v1/cluster/nodes", nil, &nodes); err != nil {
						return err
					}
					if a.json {
						enc := json.NewEncoder(a.out)
						enc.SetIndent("", "  ")
						return enc.Encode(nodes)
					}
					tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NODE\tRAFT\tAPI\tVOTER\tLEADER")
					for _, n := range nodes {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\n", n.ID, n.Address, n.API, n.Voter, n.Leader)
					}
					return tw.Flush()
				},
			},
			{
				Name: "remove", Usage: "take a node out of the Raft configuration (a dead node's vote counts against the quorum)",
				Flags: nodeFlags(&cli.StringFlag{Name: "id", Required: true, Usage: "the node's id (zk-migrate node list)"},
					&cli.BoolFlag{Name: "confirm", Usage: "required: the quorum changes"}),
				Action: func(c *cli.Context) error {
					a, err := newAPIClient(c)
					if err != nil {
						return err
					}
					if !c.Bool("confirm") {
						return usageError("removing a node changes the quorum: repeat with --confirm")
					}
					id := c.String("id")
					if err := a.do(http.MethodDelete, "/api/v1/cluster/nodes/"+url.PathEscape(id), []byte(`{"confirm":true}`), nil); err != nil {
						return err
					}
					fmt.Fprintf(a.out, "removed %s\n", id)
					return nil
				},
			},
		},
	}
}
