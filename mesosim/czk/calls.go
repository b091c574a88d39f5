package czk

/*
#include <stdlib.h>
#include "czk.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// Create flags.
const (
	Persistent           = 0
	Ephemeral            = 1
	PersistentSequential = 2
	EphemeralSequential  = 3
)

// Stat is the part of a znode's Stat the emulator uses.
type Stat struct {
	Czxid          int64
	Version        int32
	Cversion       int32
	EphemeralOwner int64
	NumChildren    int32
}

// result is what a completion hands to the waiting goroutine.
type result struct {
	rc   int
	str  string
	strs []string
	data []byte
	stat *Stat
}

// call queues one asynchronous request (start) and waits for its
// completion, the context or Close.
func (c *Conn) call(ctx context.Context, op, path string, start func(h C.uintptr_t) C.int) (result, error) {
	ch := make(chan result, 1)
	h := cgo.NewHandle(ch)
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		h.Delete()
		return result{}, fmt.Errorf("czk: %s %s: %w", op, path, ErrClosing)
	}
	rc := start(C.uintptr_t(h))
	c.mu.RUnlock()
	if rc != C.ZOK {
		h.Delete()
		return result{}, fmt.Errorf("czk: %s %s: %w", op, path, Error(rc))
	}
	select {
	case r := <-ch:
		if r.rc != int(C.ZOK) {
			return r, fmt.Errorf("czk: %s %s: %w", op, path, Error(r.rc))
		}
		return r, nil
	case <-ctx.Done():
		return result{}, fmt.Errorf("czk: %s %s: %w", op, path, ctx.Err())
	case <-c.done:
		return result{}, fmt.Errorf("czk: %s %s: %w", op, path, ErrClosing)
	}
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// Create creates path with data and flags; creatorAll selects Mesos'
// EVERYONE_READ_CREATOR_ALL ACL (for an authenticated session) instead of
// OPEN_ACL_UNSAFE. It returns the created path (with the sequence suffix).
func (c *Conn) Create(ctx context.Context, path string, data []byte, flags int, creatorAll bool) (string, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var cd *C.char
	if len(data) > 0 {
		cd = (*C.char)(C.CBytes(data))
		defer C.free(unsafe.Pointer(cd))
	}
	r, err := c.call(ctx, "create", path, func(h C.uintptr_t) C.int {
		return C.czk_acreate(c.zh, cp, cd, C.int(len(data)), cbool(creatorAll), C.int(flags), h)
	})
	return r.str, err
}

// Children lists path's children; watch leaves a child watch (delivered as
// an EventChild to Events).
func (c *Conn) Children(ctx context.Context, path string, watch bool) ([]string, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	r, err := c.call(ctx, "get_children", path, func(h C.uintptr_t) C.int {
		return C.czk_aget_children(c.zh, cp, cbool(watch), h)
	})
	return r.strs, err
}

// Get reads path's data and Stat; watch leaves a data watch.
func (c *Conn) Get(ctx context.Context, path string, watch bool) ([]byte, Stat, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	r, err := c.call(ctx, "get", path, func(h C.uintptr_t) C.int {
		return C.czk_aget(c.zh, cp, cbool(watch), h)
	})
	if err != nil {
		return nil, Stat{}, err
	}
	return r.data, *r.stat, nil
}

// Exists reports whether path exists; watch leaves an exists watch.
func (c *Conn) Exists(ctx context.Context, path string, watch bool) (bool, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	_, err := c.call(ctx, "exists", path, func(h C.uintptr_t) C.int {
		return C.czk_aexists(c.zh, cp, cbool(watch), h)
	})
	if err == nil {
		return true, nil
	}
	if isCode(err, ErrNoNode) {
		return false, nil
	}
	return false, err
}

// Delete deletes path at version (-1: any).
func (c *Conn) Delete(ctx context.Context, path string, version int) error {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	_, err := c.call(ctx, "delete", path, func(h C.uintptr_t) C.int {
		return C.czk_adelete(c.zh, cp, C.int(version), h)
	})
	return err
}

// AddAuth adds credentials (scheme "digest", cert "user:password") to the
// session; the C client replays them on every reconnect.
func (c *Conn) AddAuth(ctx context.Context, scheme, cert string) error {
	cs := C.CString(scheme)
	defer C.free(unsafe.Pointer(cs))
	cc := C.CString(cert)
	defer C.free(unsafe.Pointer(cc))
	_, err := c.call(ctx, "add_auth", scheme, func(h C.uintptr_t) C.int {
		return C.czk_add_auth(c.zh, cs, cc, C.int(len(cert)), h)
	})
	return err
}

// IsCode reports whether err carries the C client return code code.
func IsCode(err error, code Error) bool { return isCode(err, code) }
