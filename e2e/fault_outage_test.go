//go:build linux

package e2e

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
)

// outageFor is how long the datastore is away in TestCtrPullOutage:
// longer than the old count-bound resume (5 tries, given up within ~3 s
// here, ~40 s with resolve timeouts), short enough for the suite.
const outageFor = 12 * time.Second

// TestCtrPullOutage: docker-registry is killed while a 96 MiB layer
// streams through `ctr image pull`, stays away for outageFor, and comes
// back at the same address. The mirror keeps containerd's response open,
// tries again at most a second apart and continues with Range from the
// byte it reached: ctr sees no failure, the blob verifies, and the
// restarted datastore sends exactly the rest (no byte twice).
func TestCtrPullOutage(t *testing.T) {
	if testnet.IsChild(t) {
		pushChild(t)
		return
	}
	requireE2E(t)
	s := newBareSite(t)
	testnet.StartAvahi(t, s.app, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
	s.regDirs[5000] = t.TempDir()
	regCfg := testnet.DockerRegistry{Addr: ":5000", Dir: s.regDirs[5000]}
	reg := testnet.StartDockerRegistry(t, s.app, regCfg)
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal+":5000")
	img := s.push(t, pushJob{Ref: dsLocal + ":5000/outage:1", Layers: []int64{96 << 20}})[0]
	big := img.Layers[0]
	s.app.Run(t, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "200mbit", "burst", "256kb", "latency", "100ms")

	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	var out strings.Builder
	cmd := s.ctrd.CtrCmd(ctx, "image", "pull", "--hosts-dir", s.hostsDir, img.Ref)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	deadline := time.Now().Add(e2eWait)
	for partial := s.ingestSize(); partial < 16<<20; partial = s.ingestSize() {
		select {
		case err := <-done:
			t.Fatalf("ctr image pull ended (%v) before 16 MiB of the layer were in the ingest:\n%s", err, out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 16 MiB partial ingest after %v; ctr:\n%s", e2eWait, out.String())
		}
	}
	if err := reg.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("killed docker-registry with %d MiB of the layer in the ingest", s.ingestSize()>>20)
	select {
	case err := <-done:
		t.Fatalf("ctr image pull ended (%v) while the datastore was away:\n%s\nlocalds log:\n%s", err, tail(out.String(), 3000), tail(s.daemon.Log(), 6000))
	case <-time.After(outageFor):
	}
	reg2 := testnet.StartDockerRegistry(t, s.app, regCfg)
	back := time.Now()
	t.Logf("docker-registry back after %v", back.Sub(killed).Round(time.Millisecond))

	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		<-done
		err = ctx.Err()
	}
	if err != nil {
		t.Fatalf("ctr image pull across a %v outage: %v\n%s\nlocalds log:\n%s\ncontainerd log:\n%s", outageFor, err, tail(out.String(), 3000), tail(s.daemon.Log(), 8000), tail(s.ctrd.Proc.Log(), 4000))
	}
	t.Logf("pull completed %v after the datastore was back", time.Since(back).Round(time.Millisecond))
	s.checkBlobs(t, img)

	// The daemon resumed at offset N; the restarted registry sent the
	// layer's remaining bytes and no more.
	var resumedAt int64 = -1
	for _, line := range strings.Split(s.daemon.Log(), "\n") {
		if strings.Contains(line, "datastore is back") && strings.Contains(line, big.Digest.String()) {
			t.Logf("localds: %s", line)
			if m := regexp.MustCompile(`offset=(\d+)`).FindStringSubmatch(line); m != nil {
				resumedAt, _ = strconv.ParseInt(m[1], 10, 64)
			}
		}
	}
	if resumedAt < 0 {
		t.Fatalf("the daemon never resumed the layer after the outage:\n%s", tail(s.daemon.Log(), 6000))
	}
	var sent int64
	for _, line := range strings.Split(reg2.Log(), "\n") {
		if strings.Contains(line, "/blobs/"+big.Digest.String()) && strings.Contains(line, "method=GET") {
			if m := regexp.MustCompile(`http.response.written=(\d+)`).FindStringSubmatch(line); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				sent += n
			}
		}
	}
	if sent != big.Size-resumedAt {
		t.Errorf("restarted datastore sent %d bytes of the layer, want exactly the %d after offset %d", sent, big.Size-resumedAt, resumedAt)
	}
	if out := s.fsck(t); !strings.Contains(out, " 0 bad") {
		t.Fatalf("fsck: %s", out)
	}
}
