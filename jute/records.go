package jute

//go:generate go run ./internal/gen -in records.go -out records_gen.go

// The record types below mirror the classes of ZooKeeper's zookeeper.jute
// (modules org.apache.zookeeper.data and org.apache.zookeeper.proto), field
// for field and in wire order. Their Decode and Encode methods are generated
// into records_gen.go by jute/internal/gen; run `make gen` after editing this
// file and `make verify-gen` to check that the generated code is current.
//
// Supported field types: int32 (jute int), int64 (long), bool (boolean),
// string (ustring), *string (nullable ustring), []byte (buffer), []string (vector<ustring>), a record
// type, or a slice of a record type (vector<record>).

// Id is an authentication identity: a scheme and an id within it.
type Id struct {
	Scheme string
	ID     string
}

// ACL is one access control entry: permission bits granted to an Id.
type ACL struct {
	Perms int32
	ID    Id
}

// Stat is the metadata of a znode as a client sees it.
type Stat struct {
	Czxid          int64
	Mzxid          int64
	Ctime          int64
	Mtime          int64
	Version        int32
	Cversion       int32
	Aversion       int32
	EphemeralOwner int64
	DataLength     int32
	NumChildren    int32
	Pzxid          int64
}

// ClientInfo is one authenticated identity of a session (whoAmI, 3.7+).
type ClientInfo struct {
	AuthScheme string
	User       string
}

// connectRequestBody is ConnectRequest without the optional trailing
// read-only byte; ConnectRequest in connect.go adds it.
type connectRequestBody struct {
	ProtocolVersion int32
	LastZxidSeen    int64
	TimeOut         int32
	SessionID       int64
	Passwd          []byte
}

// connectResponseBody is ConnectResponse without the optional read-only byte.
type connectResponseBody struct {
	ProtocolVersion int32
	TimeOut         int32
	SessionID       int64
	Passwd          []byte
}

// RequestHeader starts every request frame after the connect handshake.
type RequestHeader struct {
	Xid  int32
	Type int32
}

// ReplyHeader starts every reply frame after the connect handshake.
type ReplyHeader struct {
	Xid  int32
	Zxid int64
	Err  int32
}

// MultiHeader precedes each operation and each result inside a multi.
type MultiHeader struct {
	Type int32
	Done bool
	Err  int32
}

// AuthPacket is the body of an addAuth request (xid -4, opcode auth).
type AuthPacket struct {
	Type   int32
	Scheme string
	Auth   []byte
}

// WatcherEvent is the body of a notification (xid -1).
type WatcherEvent struct {
	Type  int32
	State int32
	Path  string
}

// SetWatches re-registers one-shot watches after a reconnect.
type SetWatches struct {
	RelativeZxid int64
	DataWatches  []string
	ExistWatches []string
	ChildWatches []string
}

// SetWatches2 is SetWatches with persistent watches (3.6+).
type SetWatches2 struct {
	RelativeZxid               int64
	DataWatches                []string
	ExistWatches               []string
	ChildWatches               []string
	PersistentWatches          []string
	PersistentRecursiveWatches []string
}

// GetDataRequest reads a znode's data, optionally leaving a data watch.
type GetDataRequest struct {
	Path  string
	Watch bool
}

// GetDataResponse carries a znode's data and stat.
type GetDataResponse struct {
	Data []byte
	Stat Stat
}

// SetDataRequest writes a znode's data if its version matches (-1: any).
type SetDataRequest struct {
	Path    string
	Data    []byte
	Version int32
}

// SetDataResponse carries the stat after a setData.
type SetDataResponse struct {
	Stat Stat
}

// ReconfigRequest changes the ensemble membership (3.5+). Clients send the
// unused lists as null strings, so they are pointers (nil: null).
type ReconfigRequest struct {
	JoiningServers *string
	LeavingServers *string
	NewMembers     *string
	CurConfigID    int64
}

// SASLRequest carries a SASL token from client to server (GetSASLRequest).
type SASLRequest struct {
	Token []byte
}

// SASLResponse carries a SASL token from server to client (SetSASLResponse).
type SASLResponse struct {
	Token []byte
}

// CreateRequest creates a znode (opcodes create, create2, createContainer).
type CreateRequest struct {
	Path  string
	Data  []byte
	ACL   []ACL
	Flags int32
}

// CreateTTLRequest creates a znode that expires after TTL ms (3.5.3+).
type CreateTTLRequest struct {
	Path  string
	Data  []byte
	ACL   []ACL
	Flags int32
	TTL   int64
}

// CreateResponse carries the created path (opcode create).
type CreateResponse struct {
	Path string
}

// Create2Response carries the created path and stat (create2 and later kinds).
type Create2Response struct {
	Path string
	Stat Stat
}

// DeleteRequest deletes a znode if its version matches (-1: any).
type DeleteRequest struct {
	Path    string
	Version int32
}

// GetChildrenRequest lists children, optionally leaving a child watch.
type GetChildrenRequest struct {
	Path  string
	Watch bool
}

// GetChildrenResponse carries child names.
type GetChildrenResponse struct {
	Children []string
}

// GetChildren2Request lists children with the parent's stat.
type GetChildren2Request struct {
	Path  string
	Watch bool
}

// GetChildren2Response carries child names and the parent's stat.
type GetChildren2Response struct {
	Children []string
	Stat     Stat
}

// GetAllChildrenNumberRequest counts all descendants of a path (3.6+).
type GetAllChildrenNumberRequest struct {
	Path string
}

// GetAllChildrenNumberResponse carries the descendant count.
type GetAllChildrenNumberResponse struct {
	TotalNumber int32
}

// CheckVersionRequest asserts a znode's version (inside multi).
type CheckVersionRequest struct {
	Path    string
	Version int32
}

// SyncRequest makes the connected server catch up with the leader.
type SyncRequest struct {
	Path string
}

// SyncResponse echoes the synced path.
type SyncResponse struct {
	Path string
}

// GetACLRequest reads a znode's ACL.
type GetACLRequest struct {
	Path string
}

// GetACLResponse carries a znode's ACL and stat.
type GetACLResponse struct {
	ACL  []ACL
	Stat Stat
}

// SetACLRequest replaces a znode's ACL if its aversion matches.
type SetACLRequest struct {
	Path    string
	ACL     []ACL
	Version int32
}

// SetACLResponse carries the stat after setACL.
type SetACLResponse struct {
	Stat Stat
}

// ExistsRequest reads a znode's stat, optionally leaving an exist watch.
type ExistsRequest struct {
	Path  string
	Watch bool
}

// ExistsResponse carries a znode's stat.
type ExistsResponse struct {
	Stat Stat
}

// CheckWatchesRequest asks whether watches of a type exist on a path.
type CheckWatchesRequest struct {
	Path string
	Type int32
}

// RemoveWatchesRequest removes watches of a type from a path.
type RemoveWatchesRequest struct {
	Path string
	Type int32
}

// AddWatchRequest sets a persistent (recursive) watch (3.6+).
type AddWatchRequest struct {
	Path string
	Mode int32
}

// GetEphemeralsRequest lists the session's ephemerals under a prefix (3.6+).
type GetEphemeralsRequest struct {
	PrefixPath string
}

// GetEphemeralsResponse carries the session's ephemeral paths.
type GetEphemeralsResponse struct {
	Ephemerals []string
}

// WhoAmIResponse lists the session's authenticated identities (3.7+).
type WhoAmIResponse struct {
	ClientInfo []ClientInfo
}

// ErrorResponse is the result of a failed operation inside a multi.
type ErrorResponse struct {
	Err int32
}
