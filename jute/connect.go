package jute

// ConnectRequest opens or resumes a session. It is the first frame a client
// sends and has no RequestHeader. Clients of 3.4 omit the trailing read-only
// byte (go-zookeeper omits it too); HasReadOnly records whether it was there
// so that re-encoding gives the same bytes, and a server answers in kind.
type ConnectRequest struct {
	ProtocolVersion int32
	LastZxidSeen    int64
	TimeOut         int32
	SessionID       int64
	Passwd          []byte
	ReadOnly        bool
	HasReadOnly     bool
}

// Decode reads a ConnectRequest from d.
func (r *ConnectRequest) Decode(d *Decoder) error {
	var b connectRequestBody
	if err := b.Decode(d); err != nil {
		return err
	}
	r.ProtocolVersion, r.LastZxidSeen, r.TimeOut, r.SessionID, r.Passwd = b.ProtocolVersion, b.LastZxidSeen, b.TimeOut, b.SessionID, b.Passwd
	r.HasReadOnly = d.Remaining() > 0
	if r.HasReadOnly {
		r.ReadOnly = d.Bool()
	}
	return d.Err()
}

// Encode appends a ConnectRequest to e.
func (r *ConnectRequest) Encode(e *Encoder) {
	b := connectRequestBody{r.ProtocolVersion, r.LastZxidSeen, r.TimeOut, r.SessionID, r.Passwd}
	b.Encode(e)
	if r.HasReadOnly {
		e.Bool(r.ReadOnly)
	}
}

// ConnectResponse answers a ConnectRequest. TimeOut 0 with SessionID 0 means
// the session has expired. HasReadOnly as in ConnectRequest.
type ConnectResponse struct {
	ProtocolVersion int32
	TimeOut         int32
	SessionID       int64
	Passwd          []byte
	ReadOnly        bool
	HasReadOnly     bool
}

// Decode reads a ConnectResponse from d.
func (r *ConnectResponse) Decode(d *Decoder) error {
	var b connectResponseBody
	if err := b.Decode(d); err != nil {
		return err
	}
	r.ProtocolVersion, r.TimeOut, r.SessionID, r.Passwd = b.ProtocolVersion, b.TimeOut, b.SessionID, b.Passwd
	r.HasReadOnly = d.Remaining() > 0
	if r.HasReadOnly {
		r.ReadOnly = d.Bool()
	}
	return d.Err()
}

// Encode appends a ConnectResponse to e.
func (r *ConnectResponse) Encode(e *Encoder) {
	b := connectResponseBody{r.ProtocolVersion, r.TimeOut, r.SessionID, r.Passwd}
	b.Encode(e)
	if r.HasReadOnly {
		e.Bool(r.ReadOnly)
	}
}

// Expired reports whether the response tells the client its session expired.
func (r *ConnectResponse) Expired() bool { return r.TimeOut <= 0 }
