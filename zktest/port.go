package zktest

import (
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

// Ports a process hands out with StablePort, so none is given twice.
var stablePorts struct {
	sync.Mutex
	given map[int]bool
}

// StablePort returns a free loopback TCP port for a server that a test
// starts later (a Mesos emulator process, say). It is taken below the
// kernel's ephemeral range (32768-60999 by default on Linux), from which
// every outgoing connection gets its local port: a port from that range,
// found free and released, can be taken by any connection before the
// server binds it.
func StablePort() (int, error) {
	stablePorts.Lock()
	defer stablePorts.Unlock()
	if stablePorts.given == nil {
		stablePorts.given = map[int]bool{}
	}
	for range 200 {
		p := 20000 + rand.IntN(12000)
		if stablePorts.given[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		stablePorts.given[p] = true
		return p, nil
	}
	return 0, errors.New("zktest: no free port found in 20000-31999")
}

// StableAddr is StablePort as a "127.0.0.1:PORT" address.
func StableAddr() (string, error) {
	p, err := StablePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}
