package czk

/*
#include "czk.h"
*/
import "C"

import (
	"errors"
	"runtime/cgo"
	"unsafe"
)

// The functions below are called by the C client's threads (see czk.c).
// They copy what C owns and hand it over without blocking: the completion
// channel has room for its one result, and events go to an unbounded queue.

//export czkGoWatch
func czkGoWatch(h C.uintptr_t, typ, state C.int, path *C.char) {
	c := cgo.Handle(h).Value().(*Conn)
	ev := Event{Type: eventMap[typ], State: stateMap[state]}
	if path != nil {
		ev.Path = C.GoString(path)
	}
	c.push(ev)
}

func deliver(h C.uintptr_t, r result) {
	hd := cgo.Handle(h)
	ch := hd.Value().(chan result)
	hd.Delete()
	ch <- r
}

//export czkGoString
func czkGoString(h C.uintptr_t, rc C.int, value *C.char) {
	r := result{rc: int(rc)}
	if rc == C.ZOK && value != nil {
		r.str = C.GoString(value)
	}
	deliver(h, r)
}

//export czkGoStrings
func czkGoStrings(h C.uintptr_t, rc C.int, v *C.struct_String_vector) {
	r := result{rc: int(rc)}
	if rc == C.ZOK && v != nil {
		r.strs = make([]string, int(v.count))
		for i := range r.strs {
			r.strs[i] = C.GoString(C.czk_sv_at(v, C.int(i)))
		}
	}
	deliver(h, r)
}

//export czkGoData
func czkGoData(h C.uintptr_t, rc C.int, value *C.char, n C.int, st *C.struct_Stat) {
	r := result{rc: int(rc)}
	if rc == C.ZOK {
		if value != nil && n > 0 {
			r.data = C.GoBytes(unsafe.Pointer(value), n)
		}
		r.stat = &Stat{}
		if st != nil {
			r.stat = &Stat{Czxid: int64(st.czxid), Version: int32(st.version), Cversion: int32(st.cversion),
				EphemeralOwner: int64(st.ephemeralOwner), NumChildren: int32(st.numChildren)}
		}
	}
	deliver(h, r)
}

//export czkGoVoid
func czkGoVoid(h C.uintptr_t, rc C.int) { deliver(h, result{rc: int(rc)}) }

func isCode(err error, code Error) bool {
	var e Error
	return errors.As(err, &e) && e == code
}
