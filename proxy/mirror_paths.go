package proxy

import "github.com/zk-migrate/zk-migrate/jute"

// mirrored reports whether op is a write the mirror copies to the
// secondary (reconfig is refused in two-ensemble mode).
func mirrored(op jute.Op) bool {
	switch op {
	case jute.OpCreate, jute.OpCreate2, jute.OpCreateTTL, jute.OpCreateContainer,
		jute.OpDelete, jute.OpSetData, jute.OpSetACL, jute.OpMulti:
		return true
	}
	return false
}

// mirrorPaths lists the paths a write request touches that its reply does
// not name (creates are named by their reply).
func mirrorPaths(body jute.Record) []string {
	switch b := body.(type) {
	case *jute.DeleteRequest:
		return []string{b.Path}
	case *jute.SetDataRequest:
		return []string{b.Path}
	case *jute.SetACLRequest:
		return []string{b.Path}
	case *jute.MultiRequest:
		var out []string
		for _, op := range b.Ops {
			switch r := op.Req.(type) {
			case *jute.DeleteRequest:
				out = append(out, r.Path)
			case *jute.SetDataRequest:
				out = append(out, r.Path)
			}
		}
		return out
	}
	return nil
}

// writtenPaths lists the paths a successful write changed: those of its
// request and, for creates, the names in its reply (d is positioned at the
// reply's body). A multi whose reply carries an error changed nothing.
func writtenPaths(p *pending, d *jute.Decoder) []string {
	out := p.mirror
	switch p.op {
	case jute.OpCreate:
		var r jute.CreateResponse
		if r.Decode(d) == nil {
			out = append(out, r.Path)
		}
	case jute.OpCreate2, jute.OpCreateTTL, jute.OpCreateContainer:
		var r jute.Create2Response
		if r.Decode(d) == nil {
			out = append(out, r.Path)
		}
	case jute.OpMulti:
		var r jute.MultiResponse
		if r.Decode(d) != nil {
			return out // the paths known from the request; verifying more is harmless
		}
		for _, res := range r.Results {
			switch v := res.Resp.(type) {
			case *jute.ErrorResponse:
				if v.Err != 0 {
					return nil
				}
			case *jute.CreateResponse:
				out = append(out, v.Path)
			case *jute.Create2Response:
				out = append(out, v.Path)
			}
		}
	}
	return out
}
