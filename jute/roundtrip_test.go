package jute

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func strp(s string) *string { return &s }

var sampleStat = Stat{Czxid: 0x100000002, Mzxid: 0x100000009, Ctime: 1700000000000, Mtime: 1700000000500,
	Version: 3, Cversion: 7, Aversion: 1, EphemeralOwner: 0x1000abc, DataLength: 5, NumChildren: 2, Pzxid: 0x10000000a}

var sampleACL = []ACL{{Perms: PermAll, ID: Id{Scheme: "world", ID: "anyone"}},
	{Perms: PermRead, ID: Id{Scheme: "digest", ID: "alice:Xj5..."}}}

// sampleRequests has one populated request body for every opcode a client
// may send.
func sampleRequests() map[Op]Record {
	return map[Op]Record{
		OpCreate:          &CreateRequest{Path: "/a", Data: []byte("x"), ACL: sampleACL, Flags: FlagEphemeralSequential},
		OpCreate2:         &CreateRequest{Path: "/b", Data: []byte{}, ACL: sampleACL, Flags: FlagPersistent},
		OpCreateContainer: &CreateRequest{Path: "/c", Data: nil, ACL: sampleACL, Flags: FlagContainer},
		OpCreateTTL:       &CreateTTLRequest{Path: "/t", Data: []byte("t"), ACL: sampleACL, Flags: FlagPersistentWithTTL, TTL: 60000},
		OpDelete:          &DeleteRequest{Path: "/a", Version: -1},
		OpDeleteContainer: &DeleteContainerRequest{Path: "/c"},
		OpExists:          &ExistsRequest{Path: "/a", Watch: true},
		OpGetData:         &GetDataRequest{Path: "/a", Watch: true},
		OpSetData:         &SetDataRequest{Path: "/a", Data: []byte("y"), Version: 4},
		OpGetACL:          &GetACLRequest{Path: "/a"},
		OpSetACL:          &SetACLRequest{Path: "/a", ACL: sampleACL, Version: 0},
		OpGetChildren:     &GetChildrenRequest{Path: "/", Watch: false},
		OpGetChildren2:    &GetChildren2Request{Path: "/", Watch: true},
		OpSync:            &SyncRequest{Path: "/"},
		OpPing:            &Empty{},
		OpCheck:           &CheckVersionRequest{Path: "/a", Version: 2},
		OpMulti: &MultiRequest{Ops: []MultiOp{
			{MultiHeader{int32(OpCreate), false, -1}, &CreateRequest{Path: "/m", ACL: sampleACL}},
			{MultiHeader{int32(OpCreate2), false, -1}, &CreateRequest{Path: "/m2", ACL: sampleACL}},
			{MultiHeader{int32(OpCreateTTL), false, -1}, &CreateTTLRequest{Path: "/m3", ACL: sampleACL, Flags: FlagPersistentWithTTL, TTL: 5}},
			{MultiHeader{int32(OpSetData), false, -1}, &SetDataRequest{Path: "/m", Data: []byte("z"), Version: -1}},
			{MultiHeader{int32(OpCheck), false, -1}, &CheckVersionRequest{Path: "/m", Version: 1}},
			{MultiHeader{int32(OpDelete), false, -1}, &DeleteRequest{Path: "/m", Version: -1}},
		}},
		OpMultiRead: &MultiRequest{Ops: []MultiOp{
			{MultiHeader{int32(OpGetChildren), false, -1}, &GetChildrenRequest{Path: "/"}},
			{MultiHeader{int32(OpGetData), false, -1}, &GetDataRequest{Path: "/a"}},
		}},
		OpReconfig:             &ReconfigRequest{JoiningServers: strp("server.4=h:1:2;3"), LeavingServers: nil, NewMembers: strp(""), CurConfigID: -1},
		OpCheckWatches:         &CheckWatchesRequest{Path: "/a", Type: WatcherData},
		OpRemoveWatches:        &RemoveWatchesRequest{Path: "/a", Type: WatcherAny},
		OpAuth:                 &AuthPacket{Type: 0, Scheme: "digest", Auth: []byte("alice:secret")},
		OpSetWatches:           &SetWatches{RelativeZxid: 42, DataWatches: []string{"/a"}, ExistWatches: []string{}, ChildWatches: []string{"/", "/b"}},
		OpSetWatches2:          &SetWatches2{RelativeZxid: 42, DataWatches: []string{"/a"}, ExistWatches: []string{"/n"}, ChildWatches: []string{}, PersistentWatches: []string{"/p"}, PersistentRecursiveWatches: []string{"/mesos"}},
		OpSASL:                 &SASLRequest{Token: []byte{1, 2, 3}},
		OpGetEphemerals:        &GetEphemeralsRequest{PrefixPath: "/mesos"},
		OpGetAllChildrenNumber: &GetAllChildrenNumberRequest{Path: "/mesos"},
		OpAddWatch:             &AddWatchRequest{Path: "/mesos", Mode: AddWatchPersistentRecursive},
		OpWhoAmI:               &Empty{},
		OpCloseSession:         &Empty{},
	}
}

// sampleResponses has one populated successful reply body for every opcode.
func sampleResponses() map[Op]Record {
	return map[Op]Record{
		OpCreate:          &CreateResponse{Path: "/a0000000001"},
		OpCreate2:         &Create2Response{Path: "/b", Stat: sampleStat},
		OpCreateContainer: &Create2Response{Path: "/c", Stat: sampleStat},
		OpCreateTTL:       &Create2Response{Path: "/t", Stat: sampleStat},
		OpDelete:          &Empty{},
		OpDeleteContainer: &Empty{},
		OpExists:          &ExistsResponse{Stat: sampleStat},
		OpGetData:         &GetDataResponse{Data: []byte("hello"), Stat: sampleStat},
		OpSetData:         &SetDataResponse{Stat: sampleStat},
		OpGetACL:          &GetACLResponse{ACL: sampleACL, Stat: sampleStat},
		OpSetACL:          &SetACLResponse{Stat: sampleStat},
		OpGetChildren:     &GetChildrenResponse{Children: []string{"a", "b"}},
		OpGetChildren2:    &GetChildren2Response{Children: []string{}, Stat: sampleStat},
		OpSync:            &SyncResponse{Path: "/"},
		OpPing:            &Empty{},
		OpCheck:           &Empty{},
		OpMulti: &MultiResponse{Results: []MultiResult{
			{MultiHeader{int32(OpCreate), false, 0}, &CreateResponse{Path: "/m"}},
			{MultiHeader{int32(OpCreate2), false, 0}, &Create2Response{Path: "/m2", Stat: sampleStat}},
			{MultiHeader{int32(OpSetData), false, 0}, &SetDataResponse{Stat: sampleStat}},
			{MultiHeader{int32(OpCheck), false, 0}, nil},
			{MultiHeader{int32(OpDelete), false, 0}, nil},
			{MultiHeader{int32(OpError), false, int32(CodeNoNode)}, &ErrorResponse{Err: int32(CodeNoNode)}},
		}},
		OpMultiRead: &MultiResponse{Results: []MultiResult{
			{MultiHeader{int32(OpGetChildren), false, 0}, &GetChildrenResponse{Children: []string{"x"}}},
			{MultiHeader{int32(OpGetData), false, 0}, &GetDataResponse{Data: []byte("d"), Stat: sampleStat}},
			{MultiHeader{int32(OpError), false, int32(CodeNoNode)}, &ErrorResponse{Err: int32(CodeNoNode)}},
		}},
		OpReconfig:             &GetDataResponse{Data: []byte("server.1=...\nversion=100000000"), Stat: sampleStat},
		OpCheckWatches:         &Empty{},
		OpRemoveWatches:        &Empty{},
		OpAuth:                 &Empty{},
		OpSetWatches:           &Empty{},
		OpSetWatches2:          &Empty{},
		OpSASL:                 &SASLResponse{Token: []byte{9}},
		OpGetEphemerals:        &GetEphemeralsResponse{Ephemerals: []string{"/mesos/json.info_0000000001"}},
		OpGetAllChildrenNumber: &GetAllChildrenNumberResponse{TotalNumber: 12},
		OpAddWatch:             &ErrorResponse{Err: 0},
		OpWhoAmI:               &WhoAmIResponse{ClientInfo: []ClientInfo{{AuthScheme: "ip", User: "127.0.0.1"}}},
		OpCloseSession:         &Empty{},
	}
}

// TestEveryOpcodeRoundTrips encodes a request and a reply for every opcode
// of ZooKeeper 3.4-3.8, decodes them through the generic entry points the
// proxy uses, and checks both the values and the re-encoded bytes.
func TestEveryOpcodeRoundTrips(t *testing.T) {
	reqs, resps := sampleRequests(), sampleResponses()
	for _, op := range AllOps() {
		switch op {
		case OpNotification, OpError, OpCreateSession:
			continue // not requests a client sends
		}
		body, ok := reqs[op]
		if !ok {
			t.Errorf("%s: no sample request", op)
			continue
		}
		req := Request{Header: RequestHeader{Xid: 7, Type: int32(op)}, Body: body}
		var e Encoder
		EncodeRequest(&e, &req)
		frame := append([]byte(nil), e.Bytes()...)
		got, err := DecodeRequest(frame)
		if err != nil {
			t.Fatalf("%s request: %v", op, err)
		}
		if !reflect.DeepEqual(got, req) {
			t.Fatalf("%s request:\n got %#v\nwant %#v", op, got.Body, req.Body)
		}
		e.Reset(nil)
		EncodeRequest(&e, &got)
		if !bytes.Equal(e.Bytes(), frame) {
			t.Fatalf("%s request re-encodes differently", op)
		}

		rbody, ok := resps[op]
		if !ok {
			t.Errorf("%s: no sample response", op)
			continue
		}
		rep := Reply{Header: ReplyHeader{Xid: 7, Zxid: 0x100000009, Err: 0}, Body: rbody}
		e.Reset(nil)
		EncodeReply(&e, &rep)
		rframe := append([]byte(nil), e.Bytes()...)
		gotRep, err := DecodeReply(rframe, op)
		if err != nil {
			t.Fatalf("%s reply: %v", op, err)
		}
		if !reflect.DeepEqual(gotRep, rep) {
			t.Fatalf("%s reply:\n got %#v\nwant %#v", op, gotRep.Body, rep.Body)
		}
		// An error reply has a header only.
		errFrame := Marshal(&ReplyHeader{Xid: 7, Zxid: 5, Err: int32(CodeNoNode)})
		if r, err := DecodeReply(errFrame, op); err != nil || r.Body != nil || Code(r.Header.Err) != CodeNoNode {
			t.Fatalf("%s error reply = %+v, %v", op, r, err)
		}
	}
}

func TestConnectWithAndWithoutReadOnlyByte(t *testing.T) {
	for _, ro := range []bool{false, true} {
		req := ConnectRequest{ProtocolVersion: 0, LastZxidSeen: 99, TimeOut: 10000, SessionID: 0x1234, Passwd: make([]byte, 16), HasReadOnly: ro, ReadOnly: ro}
		b := Marshal(&req)
		if want := 4 + 8 + 4 + 8 + 4 + 16; len(b) != want+map[bool]int{false: 0, true: 1}[ro] {
			t.Fatalf("read-only=%v: %d bytes", ro, len(b))
		}
		var got ConnectRequest
		if err := Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, req) {
			t.Fatalf("read-only=%v: got %+v, %v", ro, got, err)
		}
		resp := ConnectResponse{TimeOut: 10000, SessionID: 0x1234, Passwd: make([]byte, 16), HasReadOnly: ro}
		var gotResp ConnectResponse
		if err := Unmarshal(Marshal(&resp), &gotResp); err != nil || !reflect.DeepEqual(gotResp, resp) {
			t.Fatalf("response read-only=%v: got %+v, %v", ro, gotResp, err)
		}
	}
	expired := ConnectResponse{Passwd: make([]byte, 16)}
	if !expired.Expired() {
		t.Fatal("timeout 0 must read as expired")
	}
}

func TestMalformedFramesAreErrors(t *testing.T) {
	cases := map[string]struct {
		frame []byte
		want  error
	}{
		"empty":              {nil, ErrShortFrame},
		"header only half":   {[]byte{0, 0, 0, 1, 0, 0}, ErrShortFrame},
		"unknown opcode":     {Marshal(&RequestHeader{Xid: 1, Type: 77}), ErrUnknownOpcode},
		"string past end":    {append(Marshal(&RequestHeader{Xid: 1, Type: int32(OpGetData)}), 0, 0, 0, 9, 'a'), ErrShortFrame},
		"negative length":    {append(Marshal(&RequestHeader{Xid: 1, Type: int32(OpGetData)}), 0xff, 0xff, 0xff, 0xfe), ErrBadLength},
		"huge vector":        {append(Marshal(&RequestHeader{Xid: 1, Type: int32(OpSetWatches)}), 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0, 0, 0), ErrBadLength},
		"trailing bytes":     {append(Marshal(&RequestHeader{Xid: 1, Type: int32(OpSync)}), append(Marshal(&SyncRequest{Path: "/"}), 0)...), ErrTrailingBytes},
		"multi bad op":       {append(Marshal(&RequestHeader{Xid: 1, Type: int32(OpMulti)}), Marshal(&MultiHeader{Type: int32(OpSync)})...), ErrBadMulti},
		"multi unterminated": {append(Marshal(&RequestHeader{Xid: 1, Type: int32(OpMulti)}), Marshal(&MultiHeader{Type: int32(OpDelete)})...), ErrShortFrame},
	}
	for name, c := range cases {
		if _, err := DecodeRequest(c.frame); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
}

func TestCodesAndOpsHaveNames(t *testing.T) {
	if CodeNoNode.String() != "NONODE" || Code(-999).String() != "-999" {
		t.Fatal("code names")
	}
	if OpAddWatch.String() != "addWatch" || Op(999).String() != "op(999)" || Op(999).Known() {
		t.Fatal("op names")
	}
	if !errors.Is(CodeNoNode.Err(), Error{Code: CodeNoNode}) || CodeOf(CodeBadVersion.Err()) != CodeBadVersion || CodeOK.Err() != nil {
		t.Fatal("code errors")
	}
	if len(AllCodes()) < 30 {
		t.Fatalf("only %d codes", len(AllCodes()))
	}
}
