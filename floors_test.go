// The floors of the module: which of its packages a package may import. A package imports only
// packages on floors below its own, so the ground floor imports nothing of ours, and `server` and
// `bpf`, both on the first floor, never import each other (they meet in `kernelcache`). Test files
// are free to import anything. docs/DESIGN.md, section "The parts", explains the layout.
package xdpcache_test

import (
	"go/build"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/xdpcache/xdpcache/"

// floors places each package; a package not listed is on the top floor and may import anything
// (commands, end-to-end tests).
var floors = map[string]int{
	// Ground: wire format, checksums, the kernel contract, the store, the upstream client, and
	// test helpers that need nothing of ours.
	"internal/protocol":       0,
	"internal/checksum":       0,
	"kernelcache":             0,
	"cache":                   0,
	"upstream":                0,
	"loadgen/workload":        0,
	"internal/netns":          0,
	"internal/testenv":        0,
	"internal/health":         0,
	"internal/packet":         1,
	"bpf":                     1,
	"server":                  1,
	"loadgen":                 1,
	"client":                  1,
	"internal/lab":            2,
	"internal/takeover":       2,
	"internal/lab/demo":       3,
	"internal/lab/experiment": 3,
}

func TestFloors(t *testing.T) {
	names := make([]string, 0, len(floors))
	for n := range floors {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		pkg, err := build.ImportDir(filepath.FromSlash(name), 0)
		if err != nil {
			t.Errorf("read package %s: %v", name, err)
			continue
		}
		for _, imp := range pkg.Imports {
			dep, ours := strings.CutPrefix(imp, module)
			if !ours {
				continue
			}
			depFloor, listed := floors[dep]
			if !listed || depFloor >= floors[name] {
				t.Errorf("%s (floor %d) imports %s (floor %s): a package imports only floors below its own",
					name, floors[name], dep, floorName(depFloor, listed))
			}
		}
	}
}

func floorName(f int, listed bool) string {
	if !listed {
		return "top"
	}
	return string(rune('0' + f))
}
