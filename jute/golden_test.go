package jute

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goldenFrame is one frame recorded from a real client talking to a real
// ZooKeeper 3.8 server (see jute/internal/capture).
type goldenFrame struct {
	file, kind, op string
	line           int
	frame          []byte
}

func loadGolden(t testing.TB) []goldenFrame {
	t.Helper()
	files, err := filepath.Glob("testdata/golden/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden frames (run make golden): %v", err)
	}
	var out []goldenFrame
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 4<<20)
		for n := 1; sc.Scan(); n++ {
			fields := strings.Fields(sc.Text())
			if len(fields) != 3 {
				continue
			}
			b, err := hex.DecodeString(fields[2])
			if err != nil {
				t.Fatalf("%s:%d: %v", f, n, err)
			}
			out = append(out, goldenFrame{filepath.Base(f), fields[0], fields[1], n, b})
		}
	}
	return out
}

func opByName(name string) (Op, bool) {
	for _, op := range AllOps() {
		if op.String() == name {
			return op, true
		}
	}
	return 0, false
}

// TestGoldenFramesRoundTrip decodes every recorded frame and re-encodes it:
// the bytes must come back identical, so the proxy can decode and rewrite
// frames without a client or server noticing.
func TestGoldenFramesRoundTrip(t *testing.T) {
	covered := map[string]bool{}
	for _, g := range loadGolden(t) {
		var got []byte
		switch g.kind {
		case "connreq":
			var r ConnectRequest
			if err := Unmarshal(g.frame, &r); err != nil {
				t.Fatalf("%s:%d connect request: %v", g.file, g.line, err)
			}
			got = Marshal(&r)
		case "connrsp":
			var r ConnectResponse
			if err := Unmarshal(g.frame, &r); err != nil {
				t.Fatalf("%s:%d connect response: %v", g.file, g.line, err)
			}
			got = Marshal(&r)
		case "req":
			req, err := DecodeRequest(g.frame)
			if err != nil {
				t.Fatalf("%s:%d %s request: %v", g.file, g.line, g.op, err)
			}
			var e Encoder
			EncodeRequest(&e, &req)
			got = e.Bytes()
		case "rsp":
			op, _ := opByName(g.op) // "event" needs no op
			rep, err := DecodeReply(g.frame, op)
			if err != nil {
				t.Fatalf("%s:%d %s reply: %v", g.file, g.line, g.op, err)
			}
			var e Encoder
			EncodeReply(&e, &rep)
			got = e.Bytes()
		default:
			t.Fatalf("%s:%d: unknown kind %q", g.file, g.line, g.kind)
		}
		if !bytes.Equal(got, g.frame) {
			t.Fatalf("%s:%d %s %s: re-encoded\n%x\nwant\n%x", g.file, g.line, g.kind, g.op, got, g.frame)
		}
		covered[g.kind+" "+g.op] = true
	}
	for _, must := range []string{"req create", "rsp create", "req multi", "rsp multi", "req auth", "rsp event",
		"req addWatch", "req getEphemerals", "req whoAmI", "rsp whoAmI", "req reconfig", "req createTTL"} {
		if !covered[must] {
			t.Errorf("golden frames lack %q: re-run make golden", must)
		}
	}
}
