package jute

import "strconv"

// Op is a ZooKeeper request opcode (ZooDefs.OpCode).
type Op int32

// Opcodes of ZooKeeper 3.4 to 3.8, as defined by ZooDefs.OpCode.
const (
	OpNotification         Op = 0
	OpCreate               Op = 1
	OpDelete               Op = 2
	OpExists               Op = 3
	OpGetData              Op = 4
	OpSetData              Op = 5
	OpGetACL               Op = 6
	OpSetACL               Op = 7
	OpGetChildren          Op = 8
	OpSync                 Op = 9
	OpPing                 Op = 11
	OpGetChildren2         Op = 12
	OpCheck                Op = 13
	OpMulti                Op = 14
	OpCreate2              Op = 15 // 3.5+
	OpReconfig             Op = 16 // 3.5+
	OpCheckWatches         Op = 17 // 3.5+
	OpRemoveWatches        Op = 18 // 3.5+
	OpCreateContainer      Op = 19 // 3.5+
	OpDeleteContainer      Op = 20 // 3.5+
	OpCreateTTL            Op = 21 // 3.5.3+
	OpMultiRead            Op = 22 // 3.6+
	OpAuth                 Op = 100
	OpSetWatches           Op = 101
	OpSASL                 Op = 102
	OpGetEphemerals        Op = 103 // 3.6+
	OpGetAllChildrenNumber Op = 104 // 3.6+
	OpSetWatches2          Op = 105 // 3.6+
	OpAddWatch             Op = 106 // 3.6+
	OpWhoAmI               Op = 107 // 3.7+
	OpCreateSession        Op = -10
	OpCloseSession         Op = -11
	OpError                Op = -1
)

// Special xids of the protocol.
const (
	XidWatchEvent  int32 = -1
	XidPing        int32 = -2
	XidAuth        int32 = -4
	XidSetWatches  int32 = -8
	XidConnectResp int32 = 0 // a ConnectResponse has no reply header
)

var opNames = map[Op]string{
	OpNotification: "notification", OpCreate: "create", OpDelete: "delete", OpExists: "exists",
	OpGetData: "getData", OpSetData: "setData", OpGetACL: "getACL", OpSetACL: "setACL",
	OpGetChildren: "getChildren", OpSync: "sync", OpPing: "ping", OpGetChildren2: "getChildren2",
	OpCheck: "check", OpMulti: "multi", OpCreate2: "create2", OpReconfig: "reconfig",
	OpCheckWatches: "checkWatches", OpRemoveWatches: "removeWatches", OpCreateContainer: "createContainer",
	OpDeleteContainer: "deleteContainer", OpCreateTTL: "createTTL", OpMultiRead: "multiRead",
	OpAuth: "auth", OpSetWatches: "setWatches", OpSASL: "sasl", OpGetEphemerals: "getEphemerals",
	OpGetAllChildrenNumber: "getAllChildrenNumber", OpSetWatches2: "setWatches2", OpAddWatch: "addWatch",
	OpWhoAmI: "whoAmI", OpCreateSession: "createSession", OpCloseSession: "closeSession", OpError: "error",
}

// Known reports whether op is defined by some ZooKeeper version 3.4 to 3.8.
func (op Op) Known() bool { _, ok := opNames[op]; return ok }

// String returns ZooKeeper's name for op, or "op(N)" for an unknown one.
func (op Op) String() string {
	if s, ok := opNames[op]; ok {
		return s
	}
	return "op(" + strconv.Itoa(int(op)) + ")"
}

// IsWrite reports whether op changes the data tree (or may, for multi).
func (op Op) IsWrite() bool {
	switch op {
	case OpCreate, OpCreate2, OpCreateContainer, OpCreateTTL, OpDelete, OpDeleteContainer,
		OpSetData, OpSetACL, OpCheck, OpMulti, OpReconfig:
		return true
	}
	return false
}

// AllOps lists every known opcode, for metrics and tests.
func AllOps() []Op {
	ops := make([]Op, 0, len(opNames))
	for op := range opNames {
		ops = append(ops, op)
	}
	return ops
}
