package testenv

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// FreePort returns a port of 127.0.0.1 free for both TCP and UDP at the time of the call.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		_ = ln.Close()
		if err == nil {
			_ = uc.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// Memcached is Debian's memcached, run for a test on a port of 127.0.0.1 that it keeps across
// Stop and Start, so a test can take it away and bring it back.
type Memcached struct {
	Port int
	Addr string // 127.0.0.1:Port, TCP (and UDP when started with UDP)

	t    testing.TB
	bin  string
	args []string
	cmd  *exec.Cmd
}

// StartMemcached runs memcached (killed with the test process, however it ends) on a free port with TCP, UDP on the same port when udp is set,
// one worker thread unless extra says otherwise (memcached takes the last -t), and the extra
// arguments. It is stopped when the test ends.
func StartMemcached(t testing.TB, udp bool, extra ...string) *Memcached {
	t.Helper()
	m := &Memcached{t: t, bin: LookPath(t, "memcached"), Port: FreePort(t)}
	m.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port))
	udpPort := "0"
	if udp {
		udpPort = strconv.Itoa(m.Port)
	}
	m.args = []string{"-l", "127.0.0.1", "-p", strconv.Itoa(m.Port), "-U", udpPort, "-t", "1"}
	if os.Geteuid() == 0 {
		m.args = append(m.args, "-u", "root") // memcached refuses to run as root without it
	}
	m.args = append(m.args, extra...)
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Start runs the process (again) and waits until it accepts TCP connections.
func (m *Memcached) Start() {
	m.t.Helper()
	var stderr bytes.Buffer
	m.cmd = exec.Command(m.bin, m.args...)
	m.cmd.Stderr = &stderr
	if err := StartChild(m.cmd); err != nil {
		m.t.Fatalf("start memcached: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", m.Addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			m.Stop()
			m.t.Fatalf("memcached did not start on %s: %v (stderr: %s)", m.Addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the process, if running, and reaps it.
func (m *Memcached) Stop() {
	if m.cmd != nil && m.cmd.Process != nil {
		_ = m.cmd.Process.Kill()
		_ = m.cmd.Wait()
	}
	m.cmd = nil
}
