package jute

import (
	"encoding/binary"
	"fmt"
)

// Record is a jute record with an explicit, reflection-free codec.
//
// Decode reads the record from d and returns d's sticky error; on error the
// record's contents are unspecified. Encode appends the record to e and cannot
// fail.
type Record interface {
	Decode(d *Decoder) error
	Encode(e *Encoder)
}

// Decoder reads jute primitives from an in-memory frame. Every length prefix
// is checked against the bytes that remain before anything is allocated, so
// a hostile frame can make decoding fail but never allocate more than the
// frame's own size. The first error sticks: later reads return zero values.
type Decoder struct {
	buf []byte
	off int
	err error
}

// NewDecoder returns a Decoder over b. It does not copy b; strings are copied
// out of it, byte buffers alias it (see Buffer).
func NewDecoder(b []byte) *Decoder { return &Decoder{buf: b} }

// Reset makes d read b from the start and clears any error.
func (d *Decoder) Reset(b []byte) { d.buf, d.off, d.err = b, 0, nil }

// Err returns the first error met, or nil.
func (d *Decoder) Err() error { return d.err }

// Remaining is the number of bytes not yet read.
func (d *Decoder) Remaining() int { return len(d.buf) - d.off }

// Offset is the number of bytes read so far.
func (d *Decoder) Offset() int { return d.off }

func (d *Decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.off = len(d.buf)
}

func (d *Decoder) need(n int, what string) bool {
	if d.err != nil {
		return false
	}
	if n > len(d.buf)-d.off {
		d.fail(fmt.Errorf("%w: %s needs %d bytes at offset %d, %d left", ErrShortFrame, what, n, d.off, len(d.buf)-d.off))
		return false
	}
	return true
}

// Int reads a jute int (big-endian int32).
func (d *Decoder) Int() int32 {
	if !d.need(4, "int") {
		return 0
	}
	v := int32(binary.BigEndian.Uint32(d.buf[d.off:]))
	d.off += 4
	return v
}

// Long reads a jute long (big-endian int64).
func (d *Decoder) Long() int64 {
	if !d.need(8, "long") {
		return 0
	}
	v := int64(binary.BigEndian.Uint64(d.buf[d.off:]))
	d.off += 8
	return v
}

// Bool reads a jute boolean (one byte, non-zero is true).
func (d *Decoder) Bool() bool {
	if !d.need(1, "boolean") {
		return false
	}
	v := d.buf[d.off] != 0
	d.off++
	return v
}

// length reads a length prefix; -1 means null and is returned as -1.
func (d *Decoder) length(what string) int {
	n := d.Int()
	if d.err != nil {
		return 0
	}
	if n < -1 {
		d.fail(fmt.Errorf("%w: %s length %d", ErrBadLength, what, n))
		return 0
	}
	return int(n)
}

// Buffer reads a jute buffer. A null buffer (length -1) is returned as nil.
// The result aliases the decoder's input: copy it to keep it past the frame.
func (d *Decoder) Buffer() []byte {
	n := d.length("buffer")
	if n <= 0 || !d.need(n, "buffer") {
		if n == 0 && d.err == nil {
			return []byte{}
		}
		return nil
	}
	v := d.buf[d.off : d.off+n : d.off+n]
	d.off += n
	return v
}

// String reads a jute ustring. A null string reads as "".
func (d *Decoder) String() string {
	n := d.length("ustring")
	if n <= 0 || !d.need(n, "ustring") {
		return ""
	}
	v := string(d.buf[d.off : d.off+n])
	d.off += n
	return v
}

// OptString reads a jute ustring that may be null (nil).
func (d *Decoder) OptString() *string {
	n := d.length("ustring")
	if n < 0 || d.err != nil {
		return nil
	}
	if n == 0 {
		s := ""
		return &s
	}
	if !d.need(n, "ustring") {
		return nil
	}
	s := string(d.buf[d.off : d.off+n])
	d.off += n
	return &s
}

// VectorLen reads a vector's element count and checks that minElemSize bytes
// per element remain, so the caller may allocate count elements. A null
// vector (-1) reads as 0 and isNull true.
func (d *Decoder) VectorLen(minElemSize int) (count int, isNull bool) {
	n := d.length("vector")
	if d.err != nil {
		return 0, false
	}
	if n == -1 {
		return 0, true
	}
	if minElemSize < 1 {
		minElemSize = 1
	}
	if n > (len(d.buf)-d.off)/minElemSize {
		d.fail(fmt.Errorf("%w: vector of %d elements cannot fit in %d bytes", ErrBadLength, n, len(d.buf)-d.off))
		return 0, false
	}
	return n, false
}

// Strings reads a vector<ustring>. A null vector reads as nil.
func (d *Decoder) Strings() []string {
	n, null := d.VectorLen(4)
	if null || d.err != nil {
		return nil
	}
	v := make([]string, n)
	for i := range v {
		v[i] = d.String()
	}
	return v
}

// Encoder appends jute primitives to a byte slice.
type Encoder struct {
	buf []byte
}

// NewEncoder returns an Encoder that appends to b (which may be nil).
func NewEncoder(b []byte) *Encoder { return &Encoder{buf: b} }

// Bytes returns everything encoded so far.
func (e *Encoder) Bytes() []byte { return e.buf }

// Reset makes e append to b[:0].
func (e *Encoder) Reset(b []byte) { e.buf = b[:0] }

// Int appends a jute int.
func (e *Encoder) Int(v int32) { e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(v)) }

// Long appends a jute long.
func (e *Encoder) Long(v int64) { e.buf = binary.BigEndian.AppendUint64(e.buf, uint64(v)) }

// Bool appends a jute boolean.
func (e *Encoder) Bool(v bool) {
	if v {
		e.buf = append(e.buf, 1)
	} else {
		e.buf = append(e.buf, 0)
	}
}

// Buffer appends a jute buffer; nil encodes as null (-1).
func (e *Encoder) Buffer(v []byte) {
	if v == nil {
		e.Int(-1)
		return
	}
	e.Int(int32(len(v)))
	e.buf = append(e.buf, v...)
}

// String appends a jute ustring.
func (e *Encoder) String(v string) {
	e.Int(int32(len(v)))
	e.buf = append(e.buf, v...)
}

// OptString appends a ustring that may be null (nil encodes as -1).
func (e *Encoder) OptString(v *string) {
	if v == nil {
		e.Int(-1)
		return
	}
	e.String(*v)
}

// VectorLen appends a vector's element count; a nil vector encodes as null.
func (e *Encoder) VectorLen(n int, isNil bool) {
	if isNil {
		e.Int(-1)
		return
	}
	e.Int(int32(n))
}

// Strings appends a vector<ustring>; nil encodes as null (-1).
func (e *Encoder) Strings(v []string) {
	e.VectorLen(len(v), v == nil)
	for _, s := range v {
		e.String(s)
	}
}

// Marshal encodes r into a new byte slice.
func Marshal(r Record) []byte {
	e := Encoder{buf: make([]byte, 0, 64)}
	r.Encode(&e)
	return e.buf
}

// Unmarshal decodes r from b and requires that b holds nothing else.
func Unmarshal(b []byte, r Record) error {
	d := Decoder{buf: b}
	if err := r.Decode(&d); err != nil {
		return err
	}
	if d.Remaining() != 0 {
		return fmt.Errorf("%w: %d bytes after %T", ErrTrailingBytes, d.Remaining(), r)
	}
	return nil
}
