package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/server"

	// Was: memcache "github.com/bradfitz/gomemcache/memcache"
	memcache "github.com/xdpcache/xdpcache/client"
)

// A gomemcache program, moved to this client by its import line alone. KernelDSCP is the one
// addition: it counts the replies the server's kernel path sent.
func Example() {
	mc := memcache.New(exampleServer) // e.g. "10.0.0.1:11211": TCP and UDP on the same port
	mc.Timeout = time.Second
	mc.KernelDSCP = 46 // as xdpcache serve --mark-kernel-replies 46

	if err := mc.Set(&memcache.Item{Key: "greeting", Value: []byte("hello"), Flags: 1}); err != nil {
		fmt.Println("set:", err)
		return
	}
	it, err := mc.Get("greeting") // over UDP, CAS id included
	if err != nil {
		fmt.Println("get:", err)
		return
	}
	fmt.Printf("%s = %s\n", it.Key, it.Value)

	it.Value = []byte("bonjour")
	fmt.Println("cas:", mc.CompareAndSwap(it))

	if _, err := mc.Get("nobody"); err == memcache.ErrCacheMiss {
		fmt.Println("nobody: miss")
	}
	fmt.Println("over UDP:", mc.Stats().UDPGets)
	// Output:
	// greeting = hello
	// cas: <nil>
	// nobody: miss
	// over UDP: 2
}

// exampleServer is the Go server, started for the examples by TestMain.
var exampleServer string

func TestMain(m *testing.M) {
	srv, addr, err := listenServe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the example server:", err)
		os.Exit(1)
	}
	exampleServer = addr
	code := m.Run()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(ctx)
	cancel()
	os.Exit(code)
}

// listenServe runs the Go server on a port of 127.0.0.1 free for both TCP and UDP.
func listenServe() (*server.Server, string, error) {
	for range 20 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, "", err
		}
		addr := tcp.Addr().(*net.TCPAddr)
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: addr.IP, Port: addr.Port})
		if err != nil {
			_ = tcp.Close()
			continue
		}
		srv, err := server.New(server.Config{Version: "xdpcache-example"})
		if err != nil {
			return nil, "", err
		}
		go func() { _ = srv.ServeTCP(tcp) }()
		go func() { _ = srv.ServeUDP(udp) }()
		return srv, addr.String(), nil
	}
	return nil, "", errors.New("no port free for both TCP and UDP")
}
