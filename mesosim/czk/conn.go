package czk

/*
#cgo CFLAGS: -DTHREADED
#cgo LDFLAGS: -lzookeeper_mt -lpthread
#include <stdlib.h>
#include "czk.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"sync"
	"time"
	"unsafe"
)

// State is a session state reported by the C client.
type State int

// Session states (the C client's ZOO_*_STATE values, mapped).
const (
	StateUnknown State = iota
	StateConnecting
	StateAssociating
	StateConnected
	StateExpired
	StateAuthFailed
)

// String is the C client's name for the state.
func (s State) String() string {
	return [...]string{"UNKNOWN", "CONNECTING", "ASSOCIATING", "CONNECTED", "EXPIRED_SESSION", "AUTH_FAILED"}[s]
}

// EventType is the type of a watch event.
type EventType int

// Event types (the C client's ZOO_*_EVENT values, mapped).
const (
	EventUnknown EventType = iota
	EventSession
	EventCreated
	EventDeleted
	EventChanged
	EventChild
	EventNotWatching
)

// String is the C client's name for the event type.
func (t EventType) String() string {
	return [...]string{"UNKNOWN", "SESSION", "CREATED", "DELETED", "CHANGED", "CHILD", "NOTWATCHING"}[t]
}

// Event is a watch or session event from the C client.
type Event struct {
	Type  EventType
	State State
	Path  string
}

var (
	stateMap map[C.int]State
	eventMap map[C.int]EventType
)

func init() {
	stateMap = map[C.int]State{
		C.czk_state(0): StateConnecting, C.czk_state(1): StateAssociating, C.czk_state(2): StateConnected,
		C.czk_state(3): StateExpired, C.czk_state(4): StateAuthFailed,
	}
	eventMap = map[C.int]EventType{
		C.czk_event(0): EventSession, C.czk_event(1): EventCreated, C.czk_event(2): EventDeleted,
		C.czk_event(3): EventChanged, C.czk_event(4): EventChild, C.czk_event(5): EventNotWatching,
	}
}

// Quiet silences the C client's own logging (it writes to stderr by
// default). Call it once before Dial.
func Quiet() { C.czk_quiet() }

// Conn is one ZooKeeper session of the C client (one zhandle_t).
type Conn struct {
	zh     *C.zhandle_t
	handle cgo.Handle

	// mu guards closed against zh being freed: calls hold it shared while
	// they are inside the C client (asynchronous calls return at once).
	mu     sync.RWMutex
	closed bool
	done   chan struct{}

	qmu    sync.Mutex
	queue  []Event
	notify chan struct{}
}

// Dial starts a session with zookeeper_init (hosts as the C client takes
// them: "h1:p1,h2:p2[/chroot]"). It returns at once; the session is
// established when a CONNECTED session event arrives.
func Dial(hosts string, sessionTimeout time.Duration) (*Conn, error) {
	c := &Conn{done: make(chan struct{}), notify: make(chan struct{}, 1)}
	c.handle = cgo.NewHandle(c)
	ch := C.CString(hosts)
	defer C.free(unsafe.Pointer(ch))
	zh, err := C.czk_init(ch, C.int(sessionTimeout/time.Millisecond), C.uintptr_t(c.handle))
	if zh == nil {
		c.handle.Delete()
		return nil, fmt.Errorf("czk: zookeeper_init(%q): %v", hosts, err)
	}
	c.zh = zh
	return c, nil
}

// Notify is signalled (capacity 1) whenever events are queued; read them
// with Events.
func (c *Conn) Notify() <-chan struct{} { return c.notify }

// Events takes every queued event, oldest first.
func (c *Conn) Events() []Event {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	evs := c.queue
	c.queue = nil
	return evs
}

func (c *Conn) push(ev Event) {
	c.qmu.Lock()
	c.queue = append(c.queue, ev)
	c.qmu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// SessionID is the session id the C client holds (0 before the first
// connect).
func (c *Conn) SessionID() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0
	}
	return int64(C.zoo_client_id(c.zh).client_id)
}

// State is the C client's current state.
func (c *Conn) State() State {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return StateUnknown
	}
	return stateMap[C.zoo_state(c.zh)]
}

// NegotiatedTimeout is the session timeout the server granted.
func (c *Conn) NegotiatedTimeout() time.Duration {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0
	}
	return time.Duration(C.zoo_recv_timeout(c.zh)) * time.Millisecond
}

// Close ends the session (zookeeper_close: a live session is closed on the
// server, so its ephemerals go at once) and frees the handle. Pending calls
// return ErrClosing.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	rc := C.zookeeper_close(c.zh)
	close(c.done)
	// zookeeper_close joined the C client's threads: no callback can use the
	// handle any more.
	c.handle.Delete()
	if rc != C.ZOK {
		return fmt.Errorf("czk: zookeeper_close: %w", Error(rc))
	}
	return nil
}
