package bpf

import "testing"

// verifierBudget is how many instructions the verifier may process for one program: well under
// its 1M limit, so that a change that multiplies the paths it checks (a loop's exits, or the
// combinations of headers and commands, left as constants instead of laundered, see launder in
// c/cache.c) fails here, with room to spare, rather than on a kernel that verifies a little
// differently.
const verifierBudget = 600_000

// TestVerifierBudget loads the program and its benchmark build and checks the instructions the
// verifier processed for each against verifierBudget.
func TestVerifierBudget(t *testing.T) {
	c := newTestCache(t, Options{})
	bspec, err := loadXdpcacheBench()
	if err != nil {
		t.Fatal(err)
	}
	b, err := newCache(Options{MaxEntries: 1024, MaxBytes: 4 << 20, AllowSources: testClients}, bspec)
	if err != nil {
		t.Fatalf("%+v", verifierDetail(err))
	}
	t.Cleanup(func() { b.Close() })
	for _, tc := range []struct {
		name string
		c    *Cache
		prog string
	}{{"xdp_cache", c, ""}, {"xdp_cache_bench", b, "xdp_cache_bench"}} {
		prog := tc.c.Program()
		if tc.prog != "" {
			prog = tc.c.rest.Programs[tc.prog]
		}
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			t.Fatalf("%s: the kernel did not report verified instructions", tc.name)
		}
		t.Logf("%s: %d instructions verified (budget %d, limit 1000000)", tc.name, n, verifierBudget)
		if n > verifierBudget {
			t.Errorf("%s: the verifier processed %d instructions, over the budget of %d", tc.name, n, verifierBudget)
		}
	}
}
