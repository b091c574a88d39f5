// Package jute is ZooKeeper's wire protocol: the jute records of every
// request and response of ZooKeeper 3.4 to 3.8, length-prefixed framing,
// opcodes and error codes.
//
// The codec is explicit and reflection-free. Record types are declared in
// records.go field for field after ZooKeeper's zookeeper.jute; their Decode
// and Encode methods are generated (jute/internal/gen, `make gen`). The
// connect handshake (optional read-only byte), multi and the raw-path
// deleteContainer body are written by hand. Every length prefix is checked
// against the bytes left in the frame before anything is allocated.
//
// Usage:
//
//	fr := jute.NewFrameReader(bufio.NewReader(conn), jute.DefaultMaxBuffer+jute.DefaultMaxBufferExtra)
//	frame, err := fr.Next()
//	req, err := jute.DecodeRequest(frame) // req.Header.Type, req.Body.(*jute.GetDataRequest)
//
//	var e jute.Encoder
//	off := e.StartFrame()
//	jute.EncodeRequest(&e, &jute.Request{Header: jute.RequestHeader{Xid: 1, Type: int32(jute.OpGetData)},
//		Body: &jute.GetDataRequest{Path: "/mesos"}})
//	e.FinishFrame(off)
//	conn.Write(e.Bytes())
package jute
