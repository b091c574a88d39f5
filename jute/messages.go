package jute

import "fmt"

// Empty is the body of requests and responses that carry none (ping,
// closeSession, whoAmI requests; delete, setWatches, addWatch responses...).
type Empty struct{}

// Decode reads nothing.
func (*Empty) Decode(d *Decoder) error { return d.Err() }

// Encode writes nothing.
func (*Empty) Encode(*Encoder) {}

// DeleteContainerRequest is the body of deleteContainer (20). ZooKeeper's
// ContainerManager sends the path as raw UTF-8 bytes filling the rest of the
// frame, not as a ustring; the server decodes it the same way.
type DeleteContainerRequest struct {
	Path string
}

// Decode reads the rest of the frame as the path.
func (r *DeleteContainerRequest) Decode(d *Decoder) error {
	if d.err != nil {
		return d.err
	}
	r.Path = string(d.buf[d.off:])
	d.off = len(d.buf)
	return nil
}

// Encode appends the raw path.
func (r *DeleteContainerRequest) Encode(e *Encoder) { e.buf = append(e.buf, r.Path...) }

// NewRequest returns an empty record for the body of a request with opcode
// op, or ErrUnknownOpcode.
func NewRequest(op Op) (Record, error) {
	switch op {
	case OpCreate, OpCreate2, OpCreateContainer:
		return &CreateRequest{}, nil
	case OpCreateTTL:
		return &CreateTTLRequest{}, nil
	case OpDelete:
		return &DeleteRequest{}, nil
	case OpDeleteContainer:
		return &DeleteContainerRequest{}, nil
	case OpExists:
		return &ExistsRequest{}, nil
	case OpGetData:
		return &GetDataRequest{}, nil
	case OpSetData:
		return &SetDataRequest{}, nil
	case OpGetACL:
		return &GetACLRequest{}, nil
	case OpSetACL:
		return &SetACLRequest{}, nil
	case OpGetChildren:
		return &GetChildrenRequest{}, nil
	case OpGetChildren2:
		return &GetChildren2Request{}, nil
	case OpSync:
		return &SyncRequest{}, nil
	case OpCheck:
		return &CheckVersionRequest{}, nil
	case OpMulti, OpMultiRead:
		return &MultiRequest{}, nil
	case OpReconfig:
		return &ReconfigRequest{}, nil
	case OpCheckWatches:
		return &CheckWatchesRequest{}, nil
	case OpRemoveWatches:
		return &RemoveWatchesRequest{}, nil
	case OpAuth:
		return &AuthPacket{}, nil
	case OpSetWatches:
		return &SetWatches{}, nil
	case OpSetWatches2:
		return &SetWatches2{}, nil
	case OpSASL:
		return &SASLRequest{}, nil
	case OpGetEphemerals:
		return &GetEphemeralsRequest{}, nil
	case OpGetAllChildrenNumber:
		return &GetAllChildrenNumberRequest{}, nil
	case OpAddWatch:
		return &AddWatchRequest{}, nil
	case OpPing, OpWhoAmI, OpCloseSession:
		return &Empty{}, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownOpcode, int32(op))
}

// NewResponse returns an empty record for the body of a successful reply to
// a request with opcode op, or ErrUnknownOpcode. A reply whose header
// carries an error has no body (multi excepted: its header says 0 and the
// per-op results carry the errors).
func NewResponse(op Op) (Record, error) {
	switch op {
	case OpCreate:
		return &CreateResponse{}, nil
	case OpCreate2, OpCreateContainer, OpCreateTTL:
		return &Create2Response{}, nil
	case OpExists:
		return &ExistsResponse{}, nil
	case OpGetData, OpReconfig:
		return &GetDataResponse{}, nil
	case OpSetData:
		return &SetDataResponse{}, nil
	case OpGetACL:
		return &GetACLResponse{}, nil
	case OpSetACL:
		return &SetACLResponse{}, nil
	case OpGetChildren:
		return &GetChildrenResponse{}, nil
	case OpGetChildren2:
		return &GetChildren2Response{}, nil
	case OpSync:
		return &SyncResponse{}, nil
	case OpMulti, OpMultiRead:
		return &MultiResponse{}, nil
	case OpSASL:
		return &SASLResponse{}, nil
	case OpGetEphemerals:
		return &GetEphemeralsResponse{}, nil
	case OpGetAllChildrenNumber:
		return &GetAllChildrenNumberResponse{}, nil
	case OpWhoAmI:
		return &WhoAmIResponse{}, nil
	case OpAddWatch:
		// The server answers addWatch with ErrorResponse{0} (captured
		// from ZooKeeper 3.8 in testdata/golden/zkcli.txt).
		return &ErrorResponse{}, nil
	case OpDelete, OpDeleteContainer, OpPing, OpCheck, OpCheckWatches, OpRemoveWatches,
		OpAuth, OpSetWatches, OpSetWatches2, OpCloseSession:
		return &Empty{}, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownOpcode, int32(op))
}

// Request is a decoded request frame (everything after the length prefix).
type Request struct {
	Header RequestHeader
	Body   Record
}

// DecodeRequest decodes a request frame after the connect handshake. The
// body must fill the frame exactly. Byte buffers in the body alias frame.
func DecodeRequest(frame []byte) (Request, error) {
	d := Decoder{buf: frame}
	var req Request
	if err := req.Header.Decode(&d); err != nil {
		return req, fmt.Errorf("request header: %w", err)
	}
	body, err := NewRequest(Op(req.Header.Type))
	if err != nil {
		return req, err
	}
	if err := body.Decode(&d); err != nil {
		return req, fmt.Errorf("%s request body: %w", Op(req.Header.Type), err)
	}
	if d.Remaining() != 0 {
		return req, fmt.Errorf("%s request: %w (%d bytes)", Op(req.Header.Type), ErrTrailingBytes, d.Remaining())
	}
	req.Body = body
	return req, nil
}

// EncodeRequest appends the frame of a request (without length prefix).
func EncodeRequest(e *Encoder, req *Request) {
	req.Header.Encode(e)
	req.Body.Encode(e)
}

// Reply is a decoded reply frame: a header and, for a watch event or a
// successful reply, a body. Body is nil when the reply carries an error.
type Reply struct {
	Header ReplyHeader
	Body   Record
}

// DecodeReply decodes a reply frame, given the opcode of the request it
// answers (ignored for watch events, xid -1, and pings, xid -2).
func DecodeReply(frame []byte, op Op) (Reply, error) {
	d := Decoder{buf: frame}
	var rep Reply
	if err := rep.Header.Decode(&d); err != nil {
		return rep, fmt.Errorf("reply header: %w", err)
	}
	var body Record
	switch {
	case rep.Header.Xid == XidWatchEvent:
		body = &WatcherEvent{}
	case rep.Header.Xid == XidPing:
		body = &Empty{}
	case rep.Header.Err != 0 && d.Remaining() == 0:
		return rep, nil
	default:
		var err error
		if body, err = NewResponse(op); err != nil {
			return rep, err
		}
	}
	if err := body.Decode(&d); err != nil {
		return rep, fmt.Errorf("%s reply body: %w", op, err)
	}
	if d.Remaining() != 0 {
		return rep, fmt.Errorf("%s reply: %w (%d bytes)", op, ErrTrailingBytes, d.Remaining())
	}
	rep.Body = body
	return rep, nil
}

// EncodeReply appends the frame of a reply (without length prefix).
func EncodeReply(e *Encoder, rep *Reply) {
	rep.Header.Encode(e)
	if rep.Body != nil {
		rep.Body.Encode(e)
	}
}
