//go:build linux

package testnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Ping sends one ICMP echo request to the IPv4 address addr from inside ns
// and waits (bounded by timeout) for the reply. It needs no ping program:
// the raw socket is opened inside ns with Do, so the packet never leaves the
// test's namespaces.
func (ns *Namespace) Ping(addr string, timeout time.Duration) error {
	dst := net.ParseIP(addr).To4()
	if dst == nil {
		return fmt.Errorf("testnet: ping: %q is not an IPv4 address", addr)
	}
	var conn net.PacketConn
	if err := ns.Do(func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		conn = c
		return err
	}); err != nil {
		return fmt.Errorf("testnet: ping %s from %s: open raw socket: %w", addr, ns.Name, err)
	}
	defer conn.Close()

	id := uint16(os.Getpid())
	seq := uint16(time.Now().UnixNano())
	req := make([]byte, 16)
	req[0] = 8 // echo request
	binary.BigEndian.PutUint16(req[4:], id)
	binary.BigEndian.PutUint16(req[6:], seq)
	copy(req[8:], "localds!")
	binary.BigEndian.PutUint16(req[2:], icmpChecksum(req))

	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("testnet: ping %s: %w", addr, err)
	}
	if _, err := conn.WriteTo(req, &net.IPAddr{IP: dst}); err != nil {
		return fmt.Errorf("testnet: ping %s from %s: send: %w", addr, ns.Name, err)
	}
	buf := make([]byte, 1500)
	for i := 0; i < 1000; i++ { // bounded by the deadline and by count
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("testnet: ping %s from %s: no reply within %v", addr, ns.Name, timeout)
			}
			return fmt.Errorf("testnet: ping %s from %s: receive: %w", addr, ns.Name, err)
		}
		ip, _ := from.(*net.IPAddr)
		if n >= 8 && buf[0] == 0 && ip != nil && ip.IP.Equal(dst) &&
			binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return nil
		}
	}
	return fmt.Errorf("testnet: ping %s from %s: too many unrelated ICMP packets", addr, ns.Name)
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
