package jute

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"runtime"
	"testing"
)

// The fuzz targets check that no input makes a decoder panic or allocate
// beyond the frame, and that whatever decodes re-encodes to something that
// decodes to the same value. Run them with `make fuzz` (scripts/fuzz.sh).

func addGoldenSeeds(f *testing.F, kinds ...string) {
	for _, g := range loadGolden(f) {
		for _, k := range kinds {
			if g.kind == k {
				f.Add(g.frame)
			}
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	addGoldenSeeds(f, "req")
	for op, body := range sampleRequests() {
		var e Encoder
		EncodeRequest(&e, &Request{Header: RequestHeader{Xid: 1, Type: int32(op)}, Body: body})
		f.Add(e.Bytes())
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		req, err := DecodeRequest(frame)
		if err != nil {
			return
		}
		var e Encoder
		EncodeRequest(&e, &req)
		again, err := DecodeRequest(e.Bytes())
		if err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, req) {
			t.Fatalf("request changed in a round trip:\n%#v\n%#v", req.Body, again.Body)
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	for _, g := range loadGolden(f) {
		if op, ok := opByName(g.op); ok && g.kind == "rsp" {
			f.Add(int32(op), g.frame)
		}
	}
	for op, body := range sampleResponses() {
		var e Encoder
		EncodeReply(&e, &Reply{Header: ReplyHeader{Xid: 1, Zxid: 2}, Body: body})
		f.Add(int32(op), e.Bytes())
	}
	f.Fuzz(func(t *testing.T, op int32, frame []byte) {
		rep, err := DecodeReply(frame, Op(op))
		if err != nil {
			return
		}
		var e Encoder
		EncodeReply(&e, &rep)
		again, err := DecodeReply(e.Bytes(), Op(op))
		if err != nil {
			t.Fatalf("re-encoded reply does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, rep) {
			t.Fatalf("reply changed in a round trip:\n%#v\n%#v", rep.Body, again.Body)
		}
	})
}

func FuzzConnect(f *testing.F) {
	addGoldenSeeds(f, "connreq", "connrsp")
	f.Fuzz(func(t *testing.T, frame []byte) {
		var req ConnectRequest
		if err := Unmarshal(frame, &req); err == nil {
			var again ConnectRequest
			if err := Unmarshal(Marshal(&req), &again); err != nil || !reflect.DeepEqual(emptyNil(again.Passwd), emptyNil(req.Passwd)) || again.SessionID != req.SessionID {
				t.Fatalf("connect request round trip: %v", err)
			}
		}
		var resp ConnectResponse
		if err := Unmarshal(frame, &resp); err == nil {
			var again ConnectResponse
			if err := Unmarshal(Marshal(&resp), &again); err != nil || again.TimeOut != resp.TimeOut {
				t.Fatalf("connect response round trip: %v", err)
			}
		}
	})
}

// FuzzFrameReader feeds arbitrary streams to the frame reader: it must
// return frames no larger than its limit and never allocate for a length it
// rejected.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0})
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte("ruok"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		fr := NewFrameReader(bufio.NewReader(bytes.NewReader(stream)), 1024)
		for {
			frame, err := fr.Next()
			if err != nil {
				return
			}
			if len(frame) > 1024 {
				t.Fatalf("frame of %d bytes over the limit", len(frame))
			}
		}
	})
}

func emptyNil(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// TestFrameReaderRejectsBeforeAllocating checks the jute.maxbuffer bound:
// a 1 GiB length prefix is refused without allocating anything like it.
func TestFrameReaderRejectsBeforeAllocating(t *testing.T) {
	stream := binary.BigEndian.AppendUint32(nil, 1<<30)
	fr := NewFrameReader(bufio.NewReader(bytes.NewReader(stream)), DefaultMaxBuffer)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := fr.Next(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("1 GiB frame: got %v, want ErrFrameTooLarge", err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("rejecting an oversized frame allocated %d bytes", grew)
	}
}
