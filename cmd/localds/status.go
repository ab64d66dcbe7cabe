package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/mirror"
	"github.com/localds/localds/internal/snapshot"
	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/resolver"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "one screen for an operator: CAS, volumes, vault encryption, unfinished downloads and ingests, the daemon's health",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON (stable field names) for scripts"},
			&cli.StringFlag{Name: "mirror-addr", Value: mirror.DefaultAddr, Usage: "the daemon's mirror listener, where /healthz, /metrics and /resolved are"},
		},
		Action: statusAction,
	}
}

// statusReport is `localds status --json`. Every section has an Error
// ("unavailable: ...") instead of its figures when its source is not
// there, so one missing source never hides the others.
type statusReport struct {
	Root       string            `json:"root"`
	Vault      vaultSection      `json:"vault"`
	CAS        casSection        `json:"cas"`
	Downloads  downloadSection   `json:"downloads"`
	Volumes    volumeSection     `json:"volumes"`
	Daemon     daemonSection     `json:"daemon"`
	Datastores datastoresSection `json:"datastores"`
}

// datastoresSection is what the daemon's Discoverer found on the network
// lately (its /resolved endpoint), most recent first.
type datastoresSection struct {
	Items []resolver.Resolution `json:"items"`
	Error string                `json:"error,omitempty"`
}

type vaultSection struct {
	vault.Status
	Error string `json:"error,omitempty"`
}

type casSection struct {
	Path        string `json:"path"`
	Blobs       int    `json:"blobs"`
	Bytes       int64  `json:"bytes"`
	Ingests     int    `json:"ingests"`
	IngestBytes int64  `json:"ingest_bytes"`
	Error       string `json:"error,omitempty"`
}

type downloadSection struct {
	Path  string `json:"path"`
	Files int    `json:"partial_files"`
	Bytes int64  `json:"partial_bytes"`
	Error string `json:"error,omitempty"`
}

type volumeSection struct {
	Items []volumeStatus `json:"items"`
	Error string         `json:"error,omitempty"`
}

type volumeStatus struct {
	Key        string   `json:"key"`
	Storage    string   `json:"storage"` // vault or novault
	Image      string   `json:"image,omitempty"`
	Bytes      int64    `json:"bytes"`
	Containers []string `json:"containers"`
}

type daemonSection struct {
	Addr    string             `json:"addr"`
	Healthy bool               `json:"healthy"`
	Health  string             `json:"health,omitempty"`
	Metrics map[string]float64 `json:"metrics,omitempty"`
	Error   string             `json:"error,omitempty"`
}

func statusAction(ctx context.Context, cmd *cli.Command) error {
	root := cmd.String("root")
	r := statusReport{Root: root}
	r.Vault = vaultStatus(ctx, root)
	r.CAS = casStatus(root)
	r.Downloads = downloadStatus(root)
	r.Volumes = volumesStatus(ctx, cmd)
	r.Daemon = daemonStatus(ctx, cmd.String("mirror-addr"))
	r.Datastores = datastoresStatus(ctx, cmd.String("mirror-addr"))
	w := cmd.Root().Writer
	if cmd.Bool("json") {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return printStatus(w, r)
}

func unavailable(err error) string { return "unavailable: " + err.Error() }

func vaultStatus(ctx context.Context, root string) vaultSection {
	st, err := vault.Inspect(ctx, root)
	if err != nil {
		return vaultSection{Status: st, Error: unavailable(err)}
	}
	return vaultSection{Status: st}
}

// casStatus counts the blobs on disk (blobs/<alg>/<hex>) and the
// unfinished ingests, without opening the store.
func casStatus(root string) casSection {
	s := casSection{Path: cas.Dir(root)}
	err := filepath.WalkDir(filepath.Join(s.Path, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			s.Blobs++
			s.Bytes += info.Size()
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.Error = unavailable(err)
		return s
	}
	ingests, err := cas.ListIngests(root)
	if err != nil {
		s.Error = unavailable(err)
		return s
	}
	s.Ingests, s.IngestBytes = len(ingests), ingests.Total()
	return s
}

// downloadStatus counts the partial archives localds pull left in the
// downloader area (resumed by the same pull, swept after
// --unfinished-expiry).
func downloadStatus(root string) downloadSection {
	s := downloadSection{Path: filepath.Join(vault.Dir(root), "downloader")}
	entries, err := os.ReadDir(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return s
	}
	if err != nil {
		s.Error = unavailable(err)
		return s
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".partial") {
			continue
		}
		if info, err := e.Info(); err == nil {
			s.Files++
			s.Bytes += info.Size()
		}
	}
	return s
}

// volumesStatus lists the volumes containerd knows on the localds
// snapshotter, as `volume ls` does, with the containers whose root each is.
func volumesStatus(ctx context.Context, cmd *cli.Command) volumeSection {
	s := volumeSection{Items: []volumeStatus{}}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		s.Error = unavailable(err)
		return s
	}
	defer c.Close()
	snName := cmd.String("snapshotter")
	users := map[string][]string{}
	ctrs, err := c.ContainerService().List(ctx)
	if err != nil {
		s.Error = unavailable(fmt.Errorf("list containers: %w", err))
		return s
	}
	for _, ct := range ctrs {
		if ct.Snapshotter == snName {
			users[ct.SnapshotKey] = append(users[ct.SnapshotKey], ct.ID)
		}
	}
	sn := c.SnapshotService(snName)
	err = sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind != snapshots.KindActive {
			return nil
		}
		if _, ok, err := snapshot.ParseVolumeKey(info.Name); !ok || err != nil {
			return nil
		}
		v := volumeStatus{Key: info.Name, Storage: "vault", Image: info.Labels[snapshot.LabelImage], Containers: users[info.Name]}
		if nv, err := snapshot.NovaultFromLabels(info.Labels); err == nil && nv {
			v.Storage = "novault"
		}
		if v.Image == "" {
			v.Image = info.Labels[snapshot.LabelImageInherited]
		}
		if v.Containers == nil {
			v.Containers = []string{}
		}
		s.Items = append(s.Items, v)
		return nil
	})
	if err != nil {
		s.Error = unavailable(fmt.Errorf("list snapshots of %s: %w", snName, err))
		return s
	}
	for i := range s.Items {
		if u, err := sn.Usage(ctx, s.Items[i].Key); err == nil {
			s.Items[i].Bytes = u.Size
		}
	}
	sort.Slice(s.Items, func(i, j int) bool { return s.Items[i].Key < s.Items[j].Key })
	return s
}

// daemonStatus asks the daemon's /healthz and reads its localds_ metrics
// without labels from /metrics; bounded by a short timeout, since a daemon
// that does not answer in seconds is itself the news.
func daemonStatus(ctx context.Context, addr string) daemonSection {
	s := daemonSection{Addr: addr}
	get := func(path string) (int, []byte, error) { return daemonGet(ctx, addr, path) }
	code, body, err := get("/healthz")
	if err != nil {
		s.Error = unavailable(fmt.Errorf("daemon at %s: %w", addr, err))
		return s
	}
	s.Healthy, s.Health = code == http.StatusOK, strings.TrimSpace(string(body))
	if _, body, err = get("/metrics"); err != nil {
		s.Error = unavailable(fmt.Errorf("metrics: %w", err))
		return s
	}
	s.Metrics = map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "localds_") || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			s.Metrics[name] = f
		}
	}
	return s
}

func printStatus(w io.Writer, r statusReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	or := func(errStr, v string) string {
		if errStr != "" {
			return errStr
		}
		return v
	}
	line("root", r.Root)
	line("vault", or(r.Vault.Error, r.Vault.Status.String()))
	line("cas", or(r.CAS.Error, fmt.Sprintf("%d blobs, %s (%s)", r.CAS.Blobs, humanSize(r.CAS.Bytes), r.CAS.Path)))
	line("unfinished ingests", or(r.CAS.Error, fmt.Sprintf("%d, %s", r.CAS.Ingests, humanSize(r.CAS.IngestBytes))))
	line("unfinished downloads", or(r.Downloads.Error, fmt.Sprintf("%d, %s (%s)", r.Downloads.Files, humanSize(r.Downloads.Bytes), r.Downloads.Path)))
	health := fmt.Sprintf("healthy (%s)", r.Daemon.Addr)
	if !r.Daemon.Healthy {
		health = fmt.Sprintf("unhealthy: %s (%s)", r.Daemon.Health, r.Daemon.Addr)
	}
	line("daemon", or(r.Daemon.Error, health))
	line("datastores", or(r.Datastores.Error, describeDatastores(r.Datastores.Items)))
	line("volumes", or(r.Volumes.Error, strconv.Itoa(len(r.Volumes.Items))))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Volumes.Items) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSTORAGE\tSIZE\tIMAGE\tCONTAINERS")
	for _, v := range r.Volumes.Items {
		ctrs := strings.Join(v.Containers, ",")
		if ctrs == "" {
			ctrs = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Key, v.Storage, humanSize(v.Bytes), or("", v.Image), ctrs)
	}
	return tw.Flush()
}

// datastoresStatus asks the daemon which .local datastores it resolved.
func datastoresStatus(ctx context.Context, addr string) datastoresSection {
	var s datastoresSection
	code, body, err := daemonGet(ctx, addr, "/resolved")
	switch {
	case err != nil:
		s.Error = unavailable(fmt.Errorf("daemon at %s: %w", addr, err))
	case code != http.StatusOK:
		s.Error = unavailable(fmt.Errorf("daemon at %s: /resolved answered %d", addr, code))
	default:
		if err := json.Unmarshal(body, &s.Items); err != nil {
			s.Error = unavailable(fmt.Errorf("daemon at %s: /resolved: %w", addr, err))
		}
	}
	return s
}

// daemonGet reads path from the daemon's mirror listener (bounded in time
// and size).
func daemonGet(ctx context.Context, addr, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

// describeDatastores is the one-line summary: each host's address, bridge
// and when it last answered.
func describeDatastores(items []resolver.Resolution) string {
	if len(items) == 0 {
		return "none resolved since the daemon started"
	}
	parts := make([]string, 0, len(items))
	for _, r := range items {
		parts = append(parts, fmt.Sprintf("%s %s on %s (%s, %s ago, %d×)",
			strings.TrimSuffix(r.Host, "."), r.Addr, r.Interface, r.Service, time.Since(r.Last).Round(time.Second), r.Count))
	}
	return strings.Join(parts, "; ")
}
