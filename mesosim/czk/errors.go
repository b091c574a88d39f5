package czk

/*
#include "czk.h"
*/
import "C"

import "fmt"

// Error is a ZooKeeper C client return code (ZOK is never an Error).
type Error int

// Error returns the C client's own text for the code (zerror).
func (e Error) Error() string {
	return fmt.Sprintf("zookeeper: %s (%d)", C.GoString(C.zerror(C.int(e))), int(e))
}

// Return codes the emulator acts on.
var (
	ErrNoNode           = Error(C.ZNONODE)
	ErrNodeExists       = Error(C.ZNODEEXISTS)
	ErrConnectionLoss   = Error(C.ZCONNECTIONLOSS)
	ErrSessionExpired   = Error(C.ZSESSIONEXPIRED)
	ErrOperationTimeout = Error(C.ZOPERATIONTIMEOUT)
	ErrInvalidState     = Error(C.ZINVALIDSTATE)
	ErrClosing          = Error(C.ZCLOSING)
	ErrNoAuth           = Error(C.ZNOAUTH)
	ErrAuthFailed       = Error(C.ZAUTHFAILED)
)
