package jute

import "errors"

// Sentinel errors of the codec. Wrapped errors carry the detail; compare with
// errors.Is.
var (
	// ErrShortFrame means a frame ended before a field it must contain.
	ErrShortFrame = errors.New("jute: frame too short")
	// ErrBadLength means a length prefix is negative (other than -1) or
	// larger than what remains of the frame.
	ErrBadLength = errors.New("jute: invalid length prefix")
	// ErrTrailingBytes means a frame holds bytes after its last field.
	ErrTrailingBytes = errors.New("jute: trailing bytes after record")
	// ErrFrameTooLarge means a frame's length prefix exceeds the configured
	// maximum (jute.maxbuffer).
	ErrFrameTooLarge = errors.New("jute: frame larger than jute.maxbuffer")
	// ErrUnknownOpcode means a request carries an opcode no ZooKeeper
	// version from 3.4 to 3.8 defines.
	ErrUnknownOpcode = errors.New("jute: unknown opcode")
	// ErrBadMulti means a multi request or response is malformed.
	ErrBadMulti = errors.New("jute: malformed multi")
)
