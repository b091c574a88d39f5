package raftstore

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// HasState reports whether dir already holds this node's Raft state (a
// log, a stable term or a snapshot): a node restarting from it needs
// neither to bootstrap nor to join. Call it before Open (it opens and
// closes the store).
func HasState(dir string) (bool, error) {
	db := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(db); os.IsNotExist(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("raftstore: %w", err)
	}
	store, err := raftboltdb.NewBoltStore(db)
	if err != nil {
		return false, fmt.Errorf("raftstore: open %s: %w", db, err)
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(dir, "snapshots"), 3, io.Discard)
	if err != nil {
		return false, fmt.Errorf("raftstore: snapshots: %w", err)
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return false, fmt.Errorf("raftstore: %s: %w", dir, err)
	}
	return has, nil
}
