package mdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
)

// maxRenames bounds --rename-on-conflict: a neighbour claiming every
// name in turn must not keep the responder probing forever.
const maxRenames = 20

// DefaultPollInterval is how often the responder looks at its interfaces
// and their addresses, so that it follows address changes without restart.
const DefaultPollInterval = time.Second

// Responder answers mDNS for one host name on a set of interfaces. It
// follows the interfaces' IPv4 addresses by polling and answers on each
// interface from that interface's zone, rebuilt whenever its addresses
// change, so a link only ever hears its own addresses.
type Responder struct {
	host    string   // "name.local."
	names   []string // interfaces asked for; empty: every suitable one
	newZone ZoneFunc
	poll    time.Duration
	rename  bool
	renames int // owned by Run

	ifaces map[string]*ifaceResponder // owned by Run
	warned map[string]string          // last warning per interface, to log changes only
	failed chan error                 // a probe that found the name taken
}

// ResponderConfig configures a Responder.
type ResponderConfig struct {
	Host         string   // the name answered for, "name", "name.local" or "name.local."
	Interfaces   []string // interface names; empty means every up, multicast, non-loopback one with IPv4
	Zone         ZoneFunc // builds what one interface answers with
	PollInterval time.Duration
	// RenameOnConflict makes a taken name move on to "name-2", "name-3"
	// (as Avahi does) instead of stopping the responder.
	RenameOnConflict bool
}

// NewResponder checks cfg and returns a responder; Run starts it.
func NewResponder(cfg ResponderConfig) (*Responder, error) {
	host, err := QualifyHost(cfg.Host)
	if err != nil {
		return nil, err
	}
	if cfg.Zone == nil {
		return nil, errors.New("mdns responder without a zone")
	}
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = DefaultPollInterval
	}
	return &Responder{
		host:    host,
		names:   slices.Clone(cfg.Interfaces),
		newZone: cfg.Zone,
		poll:    poll,
		rename:  cfg.RenameOnConflict,
		ifaces:  map[string]*ifaceResponder{},
		warned:  map[string]string{},
		failed:  make(chan error, 1),
	}, nil
}

// Run probes for the name on every interface (RFC 6762 §8.1), answers
// once it is ours there, and goes on until ctx is done; then it says
// goodbye on every interface. When another host already holds the name on
// a link it stops with a *ConflictError: it never takes a name in use.
func (r *Responder) Run(ctx context.Context) error {
	t := time.NewTicker(r.poll)
	defer t.Stop()
	defer func() {
		for name, ir := range r.ifaces {
			ir.close(ctx)
			delete(r.ifaces, name)
		}
	}()
	for {
		r.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case err := <-r.failed:
			var ce *ConflictError
			if !r.rename || !errors.As(err, &ce) {
				return err
			}
			if ce.Host == r.host { // else: a late report on a name already left
				if err := r.renameAfter(ctx, ce); err != nil {
					return err
				}
			}
		case <-t.C:
		}
	}
}

// wanted lists the interfaces to answer on now.
func (r *Responder) wanted(ctx context.Context) []net.Interface {
	if len(r.names) > 0 {
		var out []net.Interface
		for _, n := range r.names {
			ifi, err := net.InterfaceByName(n)
			if err != nil {
				r.warn(ctx, n, fmt.Sprintf("interface not found: %v", err))
				continue
			}
			out = append(out, *ifi)
		}
		return out
	}
	all, err := net.Interfaces()
	if err != nil {
		log.G(ctx).WithError(err).Warn("mdns: list interfaces")
		return nil
	}
	var out []net.Interface
	for _, ifi := range all {
		if ifi.Flags&net.FlagLoopback != 0 || ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 {
			continue
		}
		if addrs, err := ifaceAddrs(&ifi); err == nil && len(addrs) > 0 {
			out = append(out, ifi)
		}
	}
	return out
}

// reconcile opens, updates and closes per-interface responders to match
// the interfaces and addresses of the moment. One pass, bounded work.
func (r *Responder) reconcile(ctx context.Context) {
	seen := map[string]bool{}
	for _, ifi := range r.wanted(ctx) {
		seen[ifi.Name] = true
		ir := r.ifaces[ifi.Name]
		if ir != nil && ir.index != ifi.Index {
			ir.close(ctx) // the interface was re-created: new index
			delete(r.ifaces, ifi.Name)
			ir = nil
		}
		if ir != nil {
			select {
			case <-ir.done: // reader gave up; reopen below
				if ir.probeCancel != nil {
					ir.probeCancel()
				}
				ir.conn.Close()
				delete(r.ifaces, ifi.Name)
				ir = nil
			default:
			}
		}
		if ir == nil {
			conn, err := listenIface(ctx, &ifi)
			if err != nil {
				r.warn(ctx, ifi.Name, err.Error())
				continue
			}
			ir = &ifaceResponder{name: ifi.Name, index: ifi.Index, host: r.host, conn: conn, done: make(chan struct{}),
				probeEvents: make(chan probeEvent, 16)}
			r.ifaces[ifi.Name] = ir
			go ir.serve(ctx)
		}
		r.update(ctx, ir, &ifi)
	}
	for name, ir := range r.ifaces {
		if !seen[name] {
			ir.close(ctx)
			delete(r.ifaces, name)
			log.G(ctx).WithField("interface", name).Info("mdns: interface gone, stopped answering there")
		}
	}
}

// update refreshes the zone of one interface from its current addresses;
// after each change it probes for the name again, then announces (twice,
// a second apart: RFC 6762 §8.3).
func (r *Responder) update(ctx context.Context, ir *ifaceResponder, ifi *net.Interface) {
	var addrs []netip.Prefix
	if ifi.Flags&net.FlagUp != 0 {
		a, err := ifaceAddrs(ifi)
		if err != nil {
			r.warn(ctx, ifi.Name, err.Error())
			return
		}
		addrs = a
	}
	old := ir.zone.Load()
	if old != nil && slices.Equal(old.subnets, addrs) {
		return
	}
	z, err := r.newZone(r.host, ifi.HardwareAddr, addrs)
	if err != nil {
		r.warn(ctx, ifi.Name, err.Error())
		return
	}
	if ir.probeCancel != nil {
		ir.probeCancel()
		ir.probeCancel = nil
	}
	ir.owned.Store(false)
	lz := &linkZone{zone: z, subnets: addrs}
	ir.zone.Store(lz)
	if len(addrs) == 0 {
		r.warn(ctx, ifi.Name, "no IPv4 address (down or unconfigured): not answering there")
		return
	}
	delete(r.warned, ifi.Name)
	pctx, cancel := context.WithCancel(ctx)
	ir.probeCancel = cancel
	go func() {
		if err := ir.probeAndAnnounce(pctx, lz); err != nil {
			select {
			case r.failed <- err:
			default:
			}
		}
	}()
}

// renameAfter moves to the next name after a conflict on ce's name: every
// interface is closed (a goodbye where the old name was held) and the next
// reconcile probes for the new name everywhere.
func (r *Responder) renameAfter(ctx context.Context, ce *ConflictError) error {
	if r.renames++; r.renames > maxRenames {
		return fmt.Errorf("%w; gave up after %d renames", ce, maxRenames)
	}
	next, err := nextName(r.host)
	if err != nil {
		return fmt.Errorf("%w; and no name to rename to: %w", ce, err)
	}
	log.G(ctx).WithFields(log.Fields{"taken": r.host, "new": next, "interface": ce.Interface, "holder": ce.From}).
		Warn("mdns: NAME CONFLICT: the name is taken; answering under a NEW NAME (--rename-on-conflict). Clients asking for the old name will not find this datastore")
	for name, ir := range r.ifaces {
		ir.close(ctx)
		delete(r.ifaces, name)
	}
	r.host = next
	return nil
}

// nextName is Avahi's rename: "name.local." becomes "name-2.local.",
// "name-2.local." becomes "name-3.local.".
func nextName(host string) (string, error) {
	label := strings.TrimSuffix(host, LocalSuffix+".")
	n := 2
	if i := strings.LastIndexByte(label, '-'); i > 0 {
		if k, err := strconv.Atoi(label[i+1:]); err == nil && k >= 2 {
			label, n = label[:i], k+1
		}
	}
	return QualifyHost(fmt.Sprintf("%s-%d", label, n))
}

// warn logs a problem with an interface once, until it changes.
func (r *Responder) warn(ctx context.Context, name, msg string) {
	if r.warned[name] == msg {
		return
	}
	r.warned[name] = msg
	log.G(ctx).WithField("interface", name).Warn("mdns: " + msg)
}
