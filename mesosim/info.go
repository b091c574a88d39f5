package mesosim

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
)

// Version is the Mesos version the emulator reports in MasterInfo.
const Version = "1.11.0"

// Address is MasterInfo.address.
type Address struct {
	Hostname string `json:"hostname,omitempty"`
	IP       string `json:"ip"`
	Port     int    `json:"port"`
}

// MasterInfo is what a master writes into its json.info_ znode, in the
// shape of Mesos' MasterInfo protobuf rendered as JSON (ip is the IPv4
// address as the uint32 Mesos stores: network byte order read as a
// little-endian integer).
type MasterInfo struct {
	ID       string  `json:"id"`
	IP       uint32  `json:"ip"`
	Port     int     `json:"port"`
	PID      string  `json:"pid"`
	Hostname string  `json:"hostname"`
	Version  string  `json:"version"`
	Address  Address `json:"address"`
}

// NewMasterInfo builds the MasterInfo of a master serving on ip:port.
func NewMasterInfo(hostname, ip string, port int) (MasterInfo, error) {
	v4 := net.ParseIP(ip).To4()
	if v4 == nil {
		return MasterInfo{}, fmt.Errorf("mesosim: --ip %q is not an IPv4 address", ip)
	}
	if hostname == "" {
		hostname = ip
	}
	return MasterInfo{
		ID:       newUUID() + "-" + strconv.Itoa(port) + "-" + strconv.FormatUint(uint64(binary.LittleEndian.Uint32(v4)), 10),
		IP:       binary.LittleEndian.Uint32(v4),
		Port:     port,
		PID:      fmt.Sprintf("master@%s:%d", ip, port),
		Hostname: hostname,
		Version:  Version,
		Address:  Address{Hostname: hostname, IP: ip, Port: port},
	}, nil
}

// URL is the master's HTTP endpoint, http://ip:port.
func (m MasterInfo) URL() string {
	return "http://" + net.JoinHostPort(m.Address.IP, strconv.Itoa(m.Address.Port))
}

// replicaUPID is the libprocess UPID a master's log replica registers
// under log_replicas/ ("log-replica(1)@ip:port").
func replicaUPID(ip string, port int) string { return fmt.Sprintf("log-replica(1)@%s:%d", ip, port) }

// upidURL turns "name@ip:port" into http://ip:port.
func upidURL(upid string) (string, error) {
	for i := 0; i < len(upid); i++ {
		if upid[i] == '@' {
			if _, _, err := net.SplitHostPort(upid[i+1:]); err != nil {
				return "", fmt.Errorf("mesosim: UPID %q: %w", upid, err)
			}
			return "http://" + upid[i+1:], nil
		}
	}
	return "", fmt.Errorf("mesosim: %q is not a UPID (want name@ip:port)", upid)
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
