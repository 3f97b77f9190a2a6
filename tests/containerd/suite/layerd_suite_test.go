// containerd's own snapshotter testsuite (snapshots/testsuite, containerd
// 1.6.20) against layerd's containerd sockets, through containerd's proxy
// snapshotter client: what containerd itself uses for a proxy plugin.
//
// The suite calls makeSnapshotter once per subtest, in parallel, and expects
// an empty snapshotter each time. layerd gives each configured snapshotter a
// socket and a key space of its own, so tests/containerd_suite.rs configures
// one per subtest and passes their sockets here, colon-separated, in
// LAYERD_SUITE_SOCKETS; each call takes the next unused one.
//
// Built by scripts/build-containerd-suite.sh (GOPATH mode, offline, against
// Debian's golang-github-containerd-containerd-dev); run as root, since the
// suite mounts what Mounts returns.
package layerdsuite

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

var (
	mu   sync.Mutex
	next int
)

// nextSocket hands out each socket of LAYERD_SUITE_SOCKETS once.
func nextSocket() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	socks := strings.Split(os.Getenv("LAYERD_SUITE_SOCKETS"), ":")
	if len(socks) == 1 && socks[0] == "" {
		return "", fmt.Errorf("LAYERD_SUITE_SOCKETS is not set: run this through tests/containerd_suite.rs")
	}
	if next >= len(socks) {
		return "", fmt.Errorf("the suite asked for snapshotter %d, LAYERD_SUITE_SOCKETS has %d: configure one per subtest", next+1, len(socks))
	}
	s := socks[next]
	next++
	return s, nil
}

func makeSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	sock, err := nextSocket()
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.Dial("unix://"+sock, grpc.WithInsecure())
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", sock, err)
	}
	name := strings.TrimSuffix(strings.TrimPrefix(sock[strings.LastIndex(sock, "/")+1:], "containerd-"), ".sock")
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name), conn.Close, nil
}

func TestLayerd(t *testing.T) {
	testsuite.SnapshotterSuite(t, "layerd", makeSnapshotter)
}
