package jute

import (
	"errors"
	"fmt"
	"strconv"
)

// Code is a ZooKeeper error code (KeeperException.Code), carried in the Err
// field of a ReplyHeader, MultiHeader or ErrorResponse.
type Code int32

// Error codes of ZooKeeper 3.4 to 3.8.
const (
	CodeOK                           Code = 0
	CodeSystemError                  Code = -1
	CodeRuntimeInconsistency         Code = -2
	CodeDataInconsistency            Code = -3
	CodeConnectionLoss               Code = -4
	CodeMarshallingError             Code = -5
	CodeUnimplemented                Code = -6
	CodeOperationTimeout             Code = -7
	CodeBadArguments                 Code = -8
	CodeUnknownSession               Code = -12
	CodeNewConfigNoQuorum            Code = -13
	CodeReconfigInProgress           Code = -14
	CodeAPIError                     Code = -100
	CodeNoNode                       Code = -101
	CodeNoAuth                       Code = -102
	CodeBadVersion                   Code = -103
	CodeNoChildrenForEphemerals      Code = -108
	CodeNodeExists                   Code = -110
	CodeNotEmpty                     Code = -111
	CodeSessionExpired               Code = -112
	CodeInvalidCallback              Code = -113
	CodeInvalidACL                   Code = -114
	CodeAuthFailed                   Code = -115
	CodeSessionMoved                 Code = -118
	CodeNotReadOnly                  Code = -119
	CodeEphemeralOnLocalSession      Code = -120
	CodeNoWatcher                    Code = -121
	CodeRequestTimeout               Code = -122
	CodeReconfigDisabled             Code = -123
	CodeSessionClosedRequireSASLAuth Code = -124
	CodeQuotaExceeded                Code = -125
	CodeThrottledOp                  Code = -127
)

var codeNames = map[Code]string{
	CodeOK: "OK", CodeSystemError: "SYSTEMERROR", CodeRuntimeInconsistency: "RUNTIMEINCONSISTENCY",
	CodeDataInconsistency: "DATAINCONSISTENCY", CodeConnectionLoss: "CONNECTIONLOSS",
	CodeMarshallingError: "MARSHALLINGERROR", CodeUnimplemented: "UNIMPLEMENTED",
	CodeOperationTimeout: "OPERATIONTIMEOUT", CodeBadArguments: "BADARGUMENTS",
	CodeUnknownSession: "UNKNOWNSESSION", CodeNewConfigNoQuorum: "NEWCONFIGNOQUORUM",
	CodeReconfigInProgress: "RECONFIGINPROGRESS", CodeAPIError: "APIERROR", CodeNoNode: "NONODE",
	CodeNoAuth: "NOAUTH", CodeBadVersion: "BADVERSION", CodeNoChildrenForEphemerals: "NOCHILDRENFOREPHEMERALS",
	CodeNodeExists: "NODEEXISTS", CodeNotEmpty: "NOTEMPTY", CodeSessionExpired: "SESSIONEXPIRED",
	CodeInvalidCallback: "INVALIDCALLBACK", CodeInvalidACL: "INVALIDACL", CodeAuthFailed: "AUTHFAILED",
	CodeSessionMoved: "SESSIONMOVED", CodeNotReadOnly: "NOTREADONLY",
	CodeEphemeralOnLocalSession: "EPHEMERALONLOCALSESSION", CodeNoWatcher: "NOWATCHER",
	CodeRequestTimeout: "REQUESTTIMEOUT", CodeReconfigDisabled: "RECONFIGDISABLED",
	CodeSessionClosedRequireSASLAuth: "SESSIONCLOSEDREQUIRESASLAUTH", CodeQuotaExceeded: "QUOTAEXCEEDED",
	CodeThrottledOp: "THROTTLEDOP",
}

// String returns ZooKeeper's name for the code, or the number if unknown.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return strconv.Itoa(int(c))
}

// Known reports whether c is a code some ZooKeeper version defines.
func (c Code) Known() bool { _, ok := codeNames[c]; return ok }

// AllCodes lists every known code, for metrics and tests.
func AllCodes() []Code {
	cs := make([]Code, 0, len(codeNames))
	for c := range codeNames {
		cs = append(cs, c)
	}
	return cs
}

// Error is a ZooKeeper error code as a Go error. Error values compare equal
// by code, so errors.Is(err, jute.Error{Code: jute.CodeNoNode}) works, as does
// errors.As to read the code.
type Error struct{ Code Code }

func (e Error) Error() string { return fmt.Sprintf("zookeeper: %s (%d)", e.Code, int32(e.Code)) }

// CodeOf returns the ZooKeeper code carried by err: CodeOK for nil, the code
// of a wrapped Error, or CodeSystemError for any other error.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeSystemError
}

// Err returns c as an error, nil for CodeOK.
func (c Code) Err() error {
	if c == CodeOK {
		return nil
	}
	return Error{Code: c}
}
