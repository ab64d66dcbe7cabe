package dsserver

import (
	"fmt"
	"strings"
	"time"

	"github.com/localds/localds/internal/mdns"
)

// DefaultPollInterval is how often the responder looks at its interfaces
// and their addresses (mdns.DefaultPollInterval).
const DefaultPollInterval = mdns.DefaultPollInterval

// newResponder returns the datastore's mDNS responder: A queries for
// hostname and DNS-SD browses for the workstation service and services,
// on interfaces (every suitable one when empty). When the name is taken
// it stops with an error, or with rename takes the next free "name-N".
func newResponder(hostname string, interfaces []string, services []Service, poll time.Duration, rename bool) (*mdns.Responder, error) {
	host, err := mdns.QualifyHost(hostname)
	if err != nil {
		return nil, err
	}
	for _, s := range services {
		if !strings.HasPrefix(s.Type, "_") || !strings.HasSuffix(s.Type, "._tcp") || s.Port <= 0 || s.Port > 65535 {
			return nil, fmt.Errorf("bad service %q port %d: want _name._tcp and a port", s.Type, s.Port)
		}
	}
	return mdns.NewResponder(mdns.ResponderConfig{
		Host:             host,
		Interfaces:       interfaces,
		Zone:             zoneFunc(services),
		PollInterval:     poll,
		RenameOnConflict: rename,
	})
}
