package server

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestServeClosesItsSockets: after Shutdown, and when Serve is called after Shutdown, the
// listener and the UDP socket are closed, so their ports are free again.
func TestServeClosesItsSockets(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tcpAddr, udpAddr := ln.Addr().String(), uc.LocalAddr().String()
	errs := make(chan error, 2)
	go func() { errs <- s.ServeTCP(ln) }()
	go func() { errs <- s.ServeUDP(uc) }()
	time.Sleep(50 * time.Millisecond) // let both start serving; either order must work
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil && !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	}
	if l, err := net.Listen("tcp", tcpAddr); err != nil {
		t.Errorf("TCP port still held after Shutdown: %v", err)
	} else {
		l.Close()
	}
	if c, err := net.ListenPacket("udp", udpAddr); err != nil {
		t.Errorf("UDP port still held after Shutdown: %v", err)
	} else {
		c.Close()
	}

	// Serve after Shutdown refuses and still closes what it was given.
	late, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ServeTCP(late); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeTCP after Shutdown: %v, want ErrServerClosed", err)
	}
	if _, err := late.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("listener given after Shutdown left open: Accept err %v", err)
	}
}

// TestServing counts the sockets being served, and nothing once Shutdown begins.
func TestServing(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if tcp, udp := s.Serving(); tcp != 0 || udp != 0 {
		t.Fatalf("Serving before any Serve call: %d TCP, %d UDP", tcp, udp)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- s.ServeTCP(ln) }()
	go func() { errs <- s.ServeUDP(uc) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tcp, udp := s.Serving()
		if tcp == 1 && udp == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Serving: %d TCP, %d UDP, want 1 and 1", tcp, udp)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if tcp, udp := s.Serving(); tcp != 0 || udp != 0 {
		t.Errorf("Serving after Shutdown: %d TCP, %d UDP", tcp, udp)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("Serve returned %v", err)
		}
	}
}
