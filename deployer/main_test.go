package deployer

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// mesosSim builds bin/mesos-sim once for the package's tests.
func mesosSim(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		t.Fatalf("libzookeeper-mt-dev is missing (run make deps): %v", err)
	}
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "deployer-test-"); buildErr != nil {
			return
		}
		buildOut, buildErr = exec.Command("go", "build", "-o", filepath.Join(buildDir, "mesos-sim"), "../cmd/mesos-sim").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build mesos-sim: %v\n%s", buildErr, buildOut)
	}
	return filepath.Join(buildDir, "mesos-sim")
}
