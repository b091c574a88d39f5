package jute

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// FrameReader reads length-prefixed frames from a stream into a reused
// buffer. The buffer grows to the largest frame seen, bounded by Max, and
// shrinks back after a frame larger than 64 KiB so one big znode does not pin
// memory on every idle connection.
type FrameReader struct {
	r   *bufio.Reader
	buf []byte
	// Max is the largest frame accepted; a larger length prefix is an error
	// wrapping ErrFrameTooLarge and nothing is allocated for it.
	Max int
}

const shrinkAbove = 64 << 10

// NewFrameReader reads frames from r, accepting at most max bytes a frame.
func NewFrameReader(r *bufio.Reader, max int) *FrameReader {
	return &FrameReader{r: r, Max: max, buf: make([]byte, 0, 512)}
}

// Buffered reports how many bytes are already read from the stream but not
// returned, so a caller can defer flushing while more frames are waiting.
func (f *FrameReader) Buffered() int { return f.r.Buffered() }

// PeekLength returns the next frame's 4-byte prefix without consuming it, so
// a caller can recognise a four-letter word instead of a length.
func (f *FrameReader) PeekLength() ([4]byte, error) {
	var p [4]byte
	b, err := f.r.Peek(4)
	if err != nil {
		return p, err
	}
	copy(p[:], b)
	return p, nil
}

// Next returns the next frame, without its length prefix. The slice is valid
// until the next call.
func (f *FrameReader) Next() ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
		return nil, err
	}
	n := int32(binary.BigEndian.Uint32(hdr[:]))
	if n < 0 {
		return nil, fmt.Errorf("%w: negative frame length %d", ErrBadLength, n)
	}
	if int(n) > f.Max {
		return nil, fmt.Errorf("%w: %d bytes, limit %d (raise --jute-maxbuffer if this is legitimate)", ErrFrameTooLarge, n, f.Max)
	}
	if cap(f.buf) > shrinkAbove && int(n) <= shrinkAbove {
		f.buf = make([]byte, 0, 512)
	}
	if cap(f.buf) < int(n) {
		f.buf = make([]byte, n)
	}
	f.buf = f.buf[:n]
	if _, err := io.ReadFull(f.r, f.buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("frame of %d bytes: %w", n, err)
	}
	return f.buf, nil
}

// AppendFrame appends body to dst with its 4-byte length prefix.
func AppendFrame(dst, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// StartFrame appends a placeholder length prefix to e and returns its offset
// for FinishFrame.
func (e *Encoder) StartFrame() int {
	off := len(e.buf)
	e.buf = append(e.buf, 0, 0, 0, 0)
	return off
}

// FinishFrame fills in the length prefix started at off.
func (e *Encoder) FinishFrame(off int) {
	binary.BigEndian.PutUint32(e.buf[off:], uint32(len(e.buf)-off-4))
}

// FourLetterWords are the admin commands a ZooKeeper server answers when a
// connection starts with them instead of a length prefix.
var FourLetterWords = []string{
	"ruok", "stat", "srvr", "mntr", "cons", "crst", "envi", "conf", "dump", "wchs",
	"wchc", "wchp", "isro", "srst", "gtmk", "stmk", "dirs",
}

// IsFourLetterWord reports whether the first 4 bytes of a connection are a
// four-letter word. No valid frame can start with one: as a length each
// exceeds any jute.maxbuffer a server accepts.
func IsFourLetterWord(p [4]byte) bool {
	s := string(p[:])
	for _, w := range FourLetterWords {
		if s == w {
			return true
		}
	}
	return false
}
