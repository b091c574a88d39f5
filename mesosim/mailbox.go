package mesosim

import "sync"

// mailbox holds the latest value of something a goroutine follows (the
// leading master, the log replicas) and signals changes without blocking
// the writer: readers wait on changed() and read get().
type mailbox[T any] struct {
	mu sync.Mutex
	v  T
	ch chan struct{}
}

func newMailbox[T any]() *mailbox[T] { return &mailbox[T]{ch: make(chan struct{}, 1)} }

func (m *mailbox[T]) put(v T) {
	m.mu.Lock()
	m.v = v
	m.mu.Unlock()
	select {
	case m.ch <- struct{}{}:
	default:
	}
}

func (m *mailbox[T]) get() T {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.v
}

func (m *mailbox[T]) changed() <-chan struct{} { return m.ch }
