package jute

import "fmt"

// multiEnd terminates the op list of a multi request or response.
var multiEnd = MultiHeader{Type: -1, Done: true, Err: -1}

// MultiOp is one operation inside a multi or multiRead request.
type MultiOp struct {
	Header MultiHeader // Type is the op's opcode; Err is -1 as clients send it
	Req    Record
}

// MultiRequest is the body of a multi (14) or multiRead (22) request: a list
// of operations each preceded by a MultiHeader, ended by {-1, true, -1}.
type MultiRequest struct {
	Ops []MultiOp
}

// newMultiOpRequest returns the record for an operation type inside a multi
// (MultiOperationRecord in ZooKeeper).
func newMultiOpRequest(op Op) (Record, error) {
	switch op {
	case OpCreate, OpCreate2, OpCreateContainer:
		return &CreateRequest{}, nil
	case OpCreateTTL:
		return &CreateTTLRequest{}, nil
	case OpDelete, OpDeleteContainer:
		return &DeleteRequest{}, nil
	case OpSetData:
		return &SetDataRequest{}, nil
	case OpCheck:
		return &CheckVersionRequest{}, nil
	case OpGetChildren:
		return &GetChildrenRequest{}, nil
	case OpGetData:
		return &GetDataRequest{}, nil
	}
	return nil, fmt.Errorf("%w: operation %s cannot appear in a multi", ErrBadMulti, op)
}

// Decode reads a MultiRequest from d.
func (r *MultiRequest) Decode(d *Decoder) error {
	r.Ops = r.Ops[:0]
	for d.Err() == nil {
		var h MultiHeader
		if h.Decode(d) != nil || h.Done {
			break
		}
		req, err := newMultiOpRequest(Op(h.Type))
		if err != nil {
			d.fail(err)
			break
		}
		_ = req.Decode(d)
		r.Ops = append(r.Ops, MultiOp{Header: h, Req: req})
	}
	return d.Err()
}

// Encode appends a MultiRequest to e.
func (r *MultiRequest) Encode(e *Encoder) {
	for i := range r.Ops {
		r.Ops[i].Header.Encode(e)
		r.Ops[i].Req.Encode(e)
	}
	multiEnd.Encode(e)
}

// MultiResult is one result inside a multi response. Resp is nil for delete
// and check, an *ErrorResponse when Header.Type is -1 (OpError).
type MultiResult struct {
	Header MultiHeader
	Resp   Record
}

// MultiResponse is the body of a multi or multiRead reply. When an op fails,
// ZooKeeper returns every result: 0 (OK) before the failing op, its code at
// it, and -2 (RUNTIMEINCONSISTENCY) after it, each as an ErrorResponse.
type MultiResponse struct {
	Results []MultiResult
}

func newMultiOpResponse(op Op) (Record, error) {
	switch op {
	case OpCreate:
		return &CreateResponse{}, nil
	case OpCreate2, OpCreateContainer, OpCreateTTL:
		return &Create2Response{}, nil
	case OpDelete, OpDeleteContainer, OpCheck:
		return nil, nil
	case OpSetData:
		return &SetDataResponse{}, nil
	case OpGetChildren:
		return &GetChildrenResponse{}, nil
	case OpGetData:
		return &GetDataResponse{}, nil
	case OpError:
		return &ErrorResponse{}, nil
	}
	return nil, fmt.Errorf("%w: result type %s cannot appear in a multi response", ErrBadMulti, op)
}

// Decode reads a MultiResponse from d.
func (r *MultiResponse) Decode(d *Decoder) error {
	r.Results = r.Results[:0]
	for d.Err() == nil {
		var h MultiHeader
		if h.Decode(d) != nil || h.Done {
			break
		}
		resp, err := newMultiOpResponse(Op(h.Type))
		if err != nil {
			d.fail(err)
			break
		}
		if resp != nil {
			_ = resp.Decode(d)
		}
		r.Results = append(r.Results, MultiResult{Header: h, Resp: resp})
	}
	return d.Err()
}

// Encode appends a MultiResponse to e.
func (r *MultiResponse) Encode(e *Encoder) {
	for i := range r.Results {
		r.Results[i].Header.Encode(e)
		if r.Results[i].Resp != nil {
			r.Results[i].Resp.Encode(e)
		}
	}
	multiEnd.Encode(e)
}
