package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// loadWindow is how many sets each connection keeps in flight during the load phase.
const loadWindow = 64

// populate sets every key of the key space once, over TCP connections already open, with value
// sizes drawn from the workload. It prints progress to progress once a second.
func populate(ctx context.Context, conns []net.Conn, m *workloadModel, val valueSource, seed uint64, progress io.Writer) error {
	n := m.space.N()
	var done atomic.Uint64
	g, gctx := errgroup.WithContext(ctx)
	per := (n + uint64(len(conns)) - 1) / uint64(len(conns))
	for i, c := range conns {
		lo, hi := uint64(i)*per, min(uint64(i+1)*per, n)
		if lo >= hi {
			continue
		}
		r := rand.New(rand.NewPCG(seed, uint64(i)+1<<32))
		g.Go(func() error { return loadRange(gctx, c, m, val, r, lo, hi, &done) })
	}
	stop := make(chan struct{})
	go func() {
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				d := done.Load()
				fmt.Fprintf(progress, "load: %d/%d keys (%.0f%%), %.0f sets/s\n",
					d, n, 100*float64(d)/float64(n), float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	err := g.Wait()
	close(stop)
	if err != nil {
		return fmt.Errorf("load key space: %w", err)
	}
	fmt.Fprintf(progress, "load: %d keys set\n", n)
	return nil
}

func loadRange(ctx context.Context, c net.Conn, m *workloadModel, val valueSource, r *rand.Rand, lo, hi uint64, done *atomic.Uint64) error {
	// The reader holds a whole reply before parsing it; set replies are short.
	tr := &tcpTransport{conn: c, ks: m.space, val: val, br: bufio.NewReaderSize(c, 4096)}
	var buf []byte
	for k := lo; k < hi; {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf = buf[:0]
		end := min(k+loadWindow, hi)
		for i := k; i < end; i++ {
			o := op{kind: opSet, key: i, size: int32(m.sizes.Next(r))}
			buf = appendRequest(buf, &o, m.space, val)
		}
		// A dead server must not hang the load phase.
		if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
			return fmt.Errorf("set deadline: %w", err)
		}
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("write sets: %w", err)
		}
		for i := k; i < end; i++ {
			class, _, err := tr.readReply()
			if err != nil {
				return fmt.Errorf("set key %d: %w", i, err)
			}
			if class != Set {
				return fmt.Errorf("set key %d: %w", i, errReply)
			}
		}
		done.Add(end - k)
		k = end
	}
	return c.SetDeadline(time.Time{})
}
