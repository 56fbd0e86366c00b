package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

const (
	dashboardPath = "grafana/xdpcache.json"
	scrapePath    = "prometheus/scrape.yaml"
	daemonSetPath = "kubernetes/daemonset.yaml"
	unitPath      = "systemd/xdpcache.service"
)

// wantCaps is what loading and attaching XDP needs, and all the manifests may grant.
var wantCaps = []string{"BPF", "NET_ADMIN", "PERFMON"}

// --- Grafana dashboard

type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Datasource  *datasource              `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Options struct {
		YAxis struct {
			Unit string `json:"unit"`
		} `json:"yAxis"`
	} `json:"options"`
	Targets []struct {
		Datasource *datasource `json:"datasource"`
		Expr       string      `json:"expr"`
		Format     string      `json:"format"`
		RefID      string      `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatalf("read dashboard: %v", err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("parse %s: %v", dashboardPath, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: trailing data after the dashboard object", dashboardPath)
	}
	return d
}

// flatPanels returns every panel, those inside collapsed rows included, and the rows.
func flatPanels(ps []panel) (panels, rows []panel) {
	for _, p := range ps {
		if p.Type == "row" {
			rows = append(rows, p)
			inner, _ := flatPanels(p.Panels)
			panels = append(panels, inner...)
			continue
		}
		panels = append(panels, p)
	}
	return panels, rows
}

// TestDashboard checks that the dashboard imports with any Prometheus data source, uses only
// metrics that exist, shows every metric there is, and labels its axes with units.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	golden := goldenNames(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both needed for provisioning and links", d.Title, d.UID)
	}

	// The data source is a variable: ${DS_PROMETHEUS} is filled in by the import dialog
	// (__inputs) or, when provisioned from a file, by the datasource variable of that name.
	hasInput := false
	for _, in := range d.Inputs {
		if in.Name == "DS_PROMETHEUS" && in.Type == "datasource" && in.PluginID == "prometheus" {
			hasInput = true
		}
	}
	if !hasInput {
		t.Error("no __inputs entry DS_PROMETHEUS for the import dialog")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != "${DS_PROMETHEUS}") {
			t.Errorf("variable %s does not query ${DS_PROMETHEUS}", v.Name)
		}
		if v.Type == "query" {
			checkExpr(t, "variable "+v.Name, queryString(v.Query), golden)
		}
	}
	if vars["DS_PROMETHEUS"] != "datasource" {
		t.Errorf("no datasource variable DS_PROMETHEUS (variables %v)", vars)
	}
	if vars["instance"] != "query" {
		t.Errorf("no instance query variable (variables %v)", vars)
	}

	panels, rows := flatPanels(d.Panels)
	if len(rows) < 3 {
		t.Errorf("%d rows: group the panels", len(rows))
	}
	if len(panels) == 0 {
		t.Fatal("no panels")
	}
	ids := map[int]string{}
	units := map[string]bool{}
	used := map[string]bool{}
	heatmapOK := false
	for _, p := range append(append([]panel{}, panels...), rows...) {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: grid position %+v outside the 24-column grid", p.Title, p.GridPos)
		}
	}
	checkNoOverlap(t, append(append([]panel{}, panels...), rows...))
	for _, p := range panels {
		name := p.Title
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		if p.Datasource == nil || p.Datasource.UID != "${DS_PROMETHEUS}" {
			t.Errorf("panel %q: data source %+v, want uid ${DS_PROMETHEUS}", name, p.Datasource)
		}
		unit := p.FieldConfig.Defaults.Unit
		if p.Type == "heatmap" {
			unit = p.Options.YAxis.Unit
		}
		if unit == "" {
			t.Errorf("panel %q: no unit", name)
		}
		units[unit] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no queries", name)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${DS_PROMETHEUS}" {
				t.Errorf("panel %q query %s: data source %+v, want uid ${DS_PROMETHEUS}", name, tg.RefID, tg.Datasource)
			}
			if !strings.Contains(tg.Expr, "$instance") && !strings.Contains(tg.Expr, "$bench") {
				t.Errorf("panel %q query %s ignores the instance selection: %s", name, tg.RefID, tg.Expr)
			}
			for _, fam := range checkExpr(t, "panel "+strconv.Quote(name)+" query "+tg.RefID, tg.Expr, golden) {
				used[fam] = true
			}
			if p.Type == "heatmap" && tg.Format == "heatmap" && strings.Contains(tg.Expr, "xdpcache_request_duration_seconds_bucket") {
				heatmapOK = true
			}
		}
	}
	if !heatmapOK {
		t.Error("no heatmap panel over xdpcache_request_duration_seconds_bucket with format heatmap")
	}
	for _, u := range []string{"reqps", "percentunit", "s", "bytes"} {
		if !units[u] {
			t.Errorf("no panel with unit %q (units: %v)", u, units)
		}
	}
	// Every exported metric is on the dashboard: a new metric needs a panel, or it goes unseen.
	var unused []string
	for name := range golden {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("metrics on no panel: %q", unused)
	}
}

// queryString returns a template variable's query, which Grafana stores as a string or an object.
func queryString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	if json.Unmarshal(raw, &o) == nil {
		return o.Query
	}
	return ""
}

// checkExpr reports expressions that select no metric or one that is not exported, and returns
// the families the expression uses.
func checkExpr(t *testing.T, where, expr string, golden map[string]string) []string {
	t.Helper()
	// label_values(metric, label) is Grafana's, not PromQL: its label argument is not a metric.
	if m := regexp.MustCompile(`^\s*label_values\(\s*([^,)]+)\s*,\s*\w+\s*\)\s*$`).FindStringSubmatch(expr); m != nil {
		expr = m[1]
	}
	names, err := promqlMetrics(expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return nil
	}
	if len(names) == 0 {
		t.Errorf("%s selects no metric: %s", where, expr)
	}
	var fams []string
	for _, n := range names {
		fam, ok := resolveMetric(n, golden)
		if !ok {
			t.Errorf("%s uses %s, which xdpcache does not export (%s)", where, n, goldenPath)
			continue
		}
		fams = append(fams, fam)
	}
	return fams
}

func checkNoOverlap(t *testing.T, ps []panel) {
	t.Helper()
	for i, a := range ps {
		for _, b := range ps[i+1:] {
			ga, gb := a.GridPos, b.GridPos
			if ga.X < gb.X+gb.W && gb.X < ga.X+ga.W && ga.Y < gb.Y+gb.H && gb.Y < ga.Y+ga.H {
				t.Errorf("panels %q %+v and %q %+v overlap", a.Title, ga, b.Title, gb)
			}
		}
	}
}

// --- YAML manifests

func loadYAMLDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("parse %s document %d: %v", path, len(docs)+1, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no documents", path)
	}
	return docs
}

// dig walks maps and lists by key or index; ok is false if any step is missing.
func dig(v any, path ...any) (any, bool) {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, false
			}
			if v, ok = m[k]; !ok {
				return nil, false
			}
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil, false
			}
			v = l[k]
		}
	}
	return v, true
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, e := range l {
		out = append(out, strings.TrimSpace(toString(e)))
	}
	return out
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

func sameSet(a, b []string) bool {
	a, b = append([]string{}, a...), append([]string{}, b...)
	sort.Strings(a)
	sort.Strings(b)
	return reflect.DeepEqual(a, b)
}

// TestDaemonSet checks the Kubernetes manifests: the pod runs on the host network with exactly
// the three capabilities XDP needs, in a namespace whose Pod Security level admits that.
func TestDaemonSet(t *testing.T) {
	docs := loadYAMLDocs(t, daemonSetPath)
	namespaces := map[string]map[string]any{}
	var ds map[string]any
	for _, d := range docs {
		name, _ := dig(d, "metadata", "name")
		switch d["kind"] {
		case "Namespace":
			labels, _ := dig(d, "metadata", "labels")
			m, _ := labels.(map[string]any)
			namespaces[toString(name)] = m
		case "DaemonSet":
			if ds != nil {
				t.Fatal("more than one DaemonSet")
			}
			ds = d
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	ns, _ := dig(ds, "metadata", "namespace")
	labels, ok := namespaces[toString(ns)]
	if !ok {
		t.Fatalf("DaemonSet namespace %q is not created in %s", ns, daemonSetPath)
	}
	// hostNetwork and added capabilities pass only the "privileged" Pod Security level.
	if got := toString(labels["pod-security.kubernetes.io/enforce"]); got != "privileged" {
		t.Errorf("namespace %s: pod-security.kubernetes.io/enforce = %q, want privileged", ns, got)
	}

	pod, _ := dig(ds, "spec", "template", "spec")
	if hn, _ := dig(pod, "hostNetwork"); hn != true {
		t.Errorf("hostNetwork = %v, want true: XDP attaches to the node's interface", hn)
	}
	if v, ok := dig(pod, "hostPID"); ok && v == true {
		t.Error("hostPID is not needed")
	}
	containers, _ := dig(pod, "containers")
	cl, _ := containers.([]any)
	if len(cl) != 1 {
		t.Fatalf("%d containers, want 1", len(cl))
	}
	c := cl[0]
	sc, _ := dig(c, "securityContext")
	if v, _ := dig(sc, "privileged"); v == true {
		t.Error("container is privileged: it needs only BPF, NET_ADMIN and PERFMON")
	}
	if v, _ := dig(sc, "allowPrivilegeEscalation"); v != false {
		t.Errorf("allowPrivilegeEscalation = %v, want false", v)
	}
	add, _ := dig(sc, "capabilities", "add")
	if got := strs(add); !sameSet(got, wantCaps) {
		t.Errorf("capabilities.add = %q, want exactly %q", got, wantCaps)
	}
	drop, _ := dig(sc, "capabilities", "drop")
	if got := strs(drop); !sameSet(got, []string{"ALL"}) {
		t.Errorf("capabilities.drop = %q, want [ALL]", got)
	}
	// Every init container too: none may widen the set.
	if ics, ok := dig(pod, "initContainers"); ok {
		for i := range ics.([]any) {
			add, _ := dig(ics, i, "securityContext", "capabilities", "add")
			for _, cp := range strs(add) {
				if !slicesContains(wantCaps, cp) {
					t.Errorf("init container %d adds %s", i, cp)
				}
			}
		}
	}

	// The arguments are serve's flags, and the metrics port is the one scraped.
	args, _ := dig(c, "args")
	argv := strs(args)
	if len(argv) == 0 || argv[0] != "serve" {
		t.Fatalf("args %q: want serve first", argv)
	}
	checkServeFlags(t, daemonSetPath, argv[1:])
	metricsAddr := flagValue(argv[1:], "--metrics-addr")
	_, port, err := net.SplitHostPort(metricsAddr)
	if err != nil {
		t.Fatalf("--metrics-addr %q: %v", metricsAddr, err)
	}
	if ann, _ := dig(ds, "spec", "template", "metadata", "annotations", "prometheus.io/port"); toString(ann) != port {
		t.Errorf("prometheus.io/port annotation %q, metrics served on %s", toString(ann), port)
	}
	// Declared ports on the host network are host ports, which would keep the surging pod of
	// a takeover rollout off its node.
	if ports, ok := dig(c, "ports"); ok && len(strs(ports)) > 0 {
		t.Errorf("container declares ports %v: with hostNetwork they block the surging pod", ports)
	}
	// Upgrades are takeovers: the new pod beside the old one on its node, the old one idle
	// until deleted (a container that exits would be restarted and take over back).
	if !slicesContains(argv, "--takeover") || flagValue(argv[1:], "--after-handover") != "wait" {
		t.Errorf("args %q: want --takeover and --after-handover=wait", argv)
	}
	surge, _ := dig(ds, "spec", "updateStrategy", "rollingUpdate", "maxSurge")
	unavail, _ := dig(ds, "spec", "updateStrategy", "rollingUpdate", "maxUnavailable")
	if toString(surge) != "1" || toString(unavail) != "0" {
		t.Errorf("rollingUpdate maxSurge %v, maxUnavailable %v: want 1 and 0, so the new pod takes over from the old", surge, unavail)
	}
	// Probes: readiness on /readyz, liveness on /healthz, both on the metrics port.
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		gotPath, _ := dig(c, probe, "httpGet", "path")
		gotPort, _ := dig(c, probe, "httpGet", "port")
		if toString(gotPath) != path || toString(gotPort) != port {
			t.Errorf("%s: httpGet %v on port %v, want %s on the metrics port %s", probe, gotPath, gotPort, path, port)
		}
	}
	// Kubernetes kills after the grace period; serve must finish its own drain first.
	grace, _ := dig(pod, "terminationGracePeriodSeconds")
	g, _ := strconv.Atoi(toString(grace))
	if drain := shutdownTimeout(t, argv[1:]); time.Duration(g)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %d <= serve's shutdown timeout %v", g, drain)
	}
	checkMemory(t, c, argv[1:])
	if got := scrapePortK8s(t); got != port {
		t.Errorf("Prometheus scrapes pods on port %q, the DaemonSet serves metrics on %s", got, port)
	}
}

// checkMemory checks the container's memory limit leaves room above the item memory, and that
// a Go soft limit sits between the two so the GC works before the cgroup kills the pod.
func checkMemory(t *testing.T, c any, args []string) {
	t.Helper()
	items, err := strconv.ParseInt(flagValue(args, "--memory-limit"), 10, 64)
	if err != nil {
		t.Fatalf("--memory-limit: %v", err)
	}
	lim, _ := dig(c, "resources", "limits", "memory")
	limMiB, ok := strings.CutSuffix(toString(lim), "Mi")
	limit, err := strconv.ParseInt(limMiB, 10, 64)
	if !ok || err != nil {
		t.Fatalf("memory limit %q: want NNNMi", lim)
	}
	var soft int64
	envs, _ := dig(c, "env")
	for _, e := range envs.([]any) {
		if n, _ := dig(e, "name"); n == "GOMEMLIMIT" {
			v, _ := dig(e, "value")
			mib, ok := strings.CutSuffix(toString(v), "MiB")
			if soft, err = strconv.ParseInt(mib, 10, 64); !ok || err != nil {
				t.Fatalf("GOMEMLIMIT %q: want NNNMiB", v)
			}
		}
	}
	if !(items < soft && soft < limit) {
		t.Errorf("want --memory-limit %d MiB < GOMEMLIMIT %d MiB < container limit %d MiB", items, soft, limit)
	}
}

func slicesContains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

// flagValue returns the value of a long flag given as --name=v or --name v.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// shutdownTimeout is serve's drain time for these arguments.
func shutdownTimeout(t *testing.T, args []string) time.Duration {
	t.Helper()
	v := flagValue(args, "--shutdown-timeout")
	if v == "" {
		v = serveFlags(t)["--shutdown-timeout"]
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("shutdown timeout %q: %v", v, err)
	}
	return d
}

// --- serve's flags, from the binary itself

var (
	serveFlagsOnce sync.Once
	serveFlagsMap  map[string]string
	serveFlagsErr  error
)

// serveFlags builds the binary and returns serve's long flags with their defaults, so that the
// manifests are checked against the command line they will really meet.
func serveFlags(t *testing.T) map[string]string {
	t.Helper()
	serveFlagsOnce.Do(func() {
		goBin := testenv.LookPath(t, "go")
		dir, err := os.MkdirTemp("", "xdpcache-deploy-test")
		if err != nil {
			serveFlagsErr = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "xdpcache")
		out, err := exec.Command(goBin, "build", "-o", bin, "../cmd/xdpcache").CombinedOutput()
		if err != nil {
			serveFlagsErr = errors.New("build xdpcache: " + err.Error() + "\n" + string(out))
			return
		}
		out, err = exec.Command(bin, "serve", "--help").Output()
		if err != nil {
			serveFlagsErr = errors.New("xdpcache serve --help: " + err.Error())
			return
		}
		serveFlagsMap = parseCobraFlags(string(out))
	})
	if serveFlagsErr != nil {
		t.Fatal(serveFlagsErr)
	}
	if len(serveFlagsMap) == 0 {
		t.Fatal("no flags found in xdpcache serve --help")
	}
	return serveFlagsMap
}

var cobraFlagLine = regexp.MustCompile(`^\s+(?:-\w, )?(--[\w-]+)(?: \w+)?\s.*?(?:\(default "?([^")]*)"?\))?$`)

// parseCobraFlags reads cobra's "Flags:" block: "  -p, --port int   TCP port (default 11211)".
func parseCobraFlags(help string) map[string]string {
	out := map[string]string{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasSuffix(line, "Flags:") {
			in = true
			continue
		}
		if !in || strings.TrimSpace(line) == "" {
			in = in && strings.TrimSpace(line) != ""
			continue
		}
		if m := cobraFlagLine.FindStringSubmatch(line); m != nil {
			out[m[1]] = m[2]
		}
	}
	return out
}

// checkServeFlags reports every long flag in args that serve does not have.
func checkServeFlags(t *testing.T, where string, args []string) {
	t.Helper()
	known := serveFlags(t)
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(a, "=")
		if _, ok := known[name]; !ok {
			t.Errorf("%s passes %s, which xdpcache serve does not accept", where, name)
		}
	}
}

func TestParseCobraFlags(t *testing.T) {
	help := "Usage:\n  xdpcache serve [flags]\n\nFlags:\n" +
		"  -p, --port int                    TCP port (0: no TCP) (default 11211)\n" +
		"      --xdp-iface string            interface (empty: no kernel cache)\n" +
		"      --xdp-mode string             XDP attach mode (default \"auto\")\n" +
		"      --shutdown-timeout duration   how long (default 10s)\n" +
		"  -h, --help                        help for serve\n\nGlobal Flags:\n      --verbose   more\n"
	want := map[string]string{"--port": "11211", "--xdp-iface": "", "--xdp-mode": "auto",
		"--shutdown-timeout": "10s", "--help": "", "--verbose": ""}
	if got := parseCobraFlags(help); !reflect.DeepEqual(got, want) {
		t.Errorf("parseCobraFlags = %v, want %v", got, want)
	}
}

// --- Prometheus scrape config

type scrapeConfig struct {
	ScrapeConfigs []struct {
		JobName        string `yaml:"job_name"`
		ScrapeInterval string `yaml:"scrape_interval"`
		MetricsPath    string `yaml:"metrics_path"`
		StaticConfigs  []struct {
			Targets []string          `yaml:"targets"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"static_configs"`
		KubernetesSDConfigs []struct {
			Role       string `yaml:"role"`
			Namespaces struct {
				Names []string `yaml:"names"`
			} `yaml:"namespaces"`
		} `yaml:"kubernetes_sd_configs"`
		RelabelConfigs []struct {
			SourceLabels []string `yaml:"source_labels"`
			Regex        string   `yaml:"regex"`
			Replacement  string   `yaml:"replacement"`
			TargetLabel  string   `yaml:"target_label"`
			Action       string   `yaml:"action"`
		} `yaml:"relabel_configs"`
	} `yaml:"scrape_configs"`
}

func loadScrape(t *testing.T) scrapeConfig {
	t.Helper()
	b, err := os.ReadFile(scrapePath)
	if err != nil {
		t.Fatalf("read scrape config: %v", err)
	}
	var sc scrapeConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt key would be silently ignored by a loose parse
	if err := dec.Decode(&sc); err != nil {
		t.Fatalf("parse %s: %v", scrapePath, err)
	}
	return sc
}

// scrapePortK8s is the port the Kubernetes job rewrites pod addresses to.
func scrapePortK8s(t *testing.T) string {
	t.Helper()
	for _, j := range loadScrape(t).ScrapeConfigs {
		if len(j.KubernetesSDConfigs) == 0 {
			continue
		}
		for _, r := range j.RelabelConfigs {
			if r.TargetLabel == "__address__" {
				_, port, err := net.SplitHostPort(r.Replacement)
				if err != nil {
					t.Fatalf("job %s: __address__ replacement %q: %v", j.JobName, r.Replacement, err)
				}
				return port
			}
		}
		t.Fatalf("job %s rewrites no __address__: it would scrape the pods' declared ports", j.JobName)
	}
	t.Fatal("no kubernetes_sd job in the scrape config")
	return ""
}

// TestScrapeConfig checks the scrape jobs: valid intervals, the static target is where the
// systemd unit serves metrics, and the Kubernetes job keeps only the DaemonSet's pods in its
// namespace.
func TestScrapeConfig(t *testing.T) {
	sc := loadScrape(t)
	if len(sc.ScrapeConfigs) == 0 {
		t.Fatal("no scrape_configs")
	}
	names := map[string]bool{}
	var static []string
	for _, j := range sc.ScrapeConfigs {
		if j.JobName == "" || names[j.JobName] {
			t.Errorf("job name %q empty or repeated", j.JobName)
		}
		names[j.JobName] = true
		if d, err := time.ParseDuration(j.ScrapeInterval); err != nil || d <= 0 || d > 5*time.Minute {
			t.Errorf("job %s: scrape_interval %q", j.JobName, j.ScrapeInterval)
		}
		if j.MetricsPath != "" && j.MetricsPath != "/metrics" {
			t.Errorf("job %s: metrics_path %q, serve answers on /metrics", j.JobName, j.MetricsPath)
		}
		for _, s := range j.StaticConfigs {
			static = append(static, s.Targets...)
		}
		for _, k := range j.KubernetesSDConfigs {
			if k.Role != "pod" {
				t.Errorf("job %s: kubernetes_sd role %q, want pod (a DaemonSet has no service per node)", j.JobName, k.Role)
			}
			if !sameSet(k.Namespaces.Names, []string{daemonSetNamespace(t)}) {
				t.Errorf("job %s: namespaces %q, the DaemonSet runs in %q", j.JobName, k.Namespaces.Names, daemonSetNamespace(t))
			}
			keeps := false
			for _, r := range j.RelabelConfigs {
				if r.Action == "keep" && slicesContains(r.SourceLabels, "__meta_kubernetes_pod_label_app_kubernetes_io_name") &&
					r.Regex == daemonSetAppName(t) {
					keeps = true
				}
			}
			if !keeps {
				t.Errorf("job %s does not keep only pods labelled app.kubernetes.io/name=%s", j.JobName, daemonSetAppName(t))
			}
		}
	}
	unitAddr := flagValue(unitServeArgs(t), "--metrics-addr")
	if !slicesContains(static, unitAddr) {
		t.Errorf("static targets %q do not include %s, where the systemd unit serves metrics", static, unitAddr)
	}
}

func daemonSetNamespace(t *testing.T) string {
	t.Helper()
	for _, d := range loadYAMLDocs(t, daemonSetPath) {
		if d["kind"] == "DaemonSet" {
			ns, _ := dig(d, "metadata", "namespace")
			return toString(ns)
		}
	}
	t.Fatal("no DaemonSet")
	return ""
}

func daemonSetAppName(t *testing.T) string {
	t.Helper()
	for _, d := range loadYAMLDocs(t, daemonSetPath) {
		if d["kind"] == "DaemonSet" {
			v, _ := dig(d, "spec", "template", "metadata", "labels", "app.kubernetes.io/name")
			return toString(v)
		}
	}
	t.Fatal("no DaemonSet")
	return ""
}

// --- systemd unit

// parseUnit reads a systemd unit into section -> key -> values (repeated keys accumulate; an
// empty assignment resets, as systemd does), joining backslash continuations.
func parseUnit(text string) (map[string]map[string][]string, error) {
	out := map[string]map[string][]string{}
	section := ""
	var logical []string
	cur := ""
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (strings.HasPrefix(trimmed, "#") || strings.HasPrefix(trimmed, ";")) {
			continue
		}
		if cont, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur += cont + " "
			continue
		}
		logical = append(logical, cur+trimmed)
		cur = ""
	}
	if cur != "" {
		return nil, errors.New("unit ends inside a continued line")
	}
	for _, l := range logical {
		switch {
		case l == "":
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			if out[section] == nil {
				out[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				return nil, errors.New("not KEY=VALUE in a section: " + l)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if v == "" {
				out[section][k] = nil
				continue
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out, nil
}

func loadUnit(t *testing.T) map[string]map[string][]string {
	t.Helper()
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatalf("read unit: %v", err)
	}
	u, err := parseUnit(string(b))
	if err != nil {
		t.Fatalf("parse %s: %v", unitPath, err)
	}
	return u
}

// unitServeArgs returns ExecStart's arguments after "serve", with the unit's Environment=
// defaults substituted, as systemd would with an empty /etc/default/xdpcache.
func unitServeArgs(t *testing.T) []string {
	t.Helper()
	svc := loadUnit(t)["Service"]
	env := map[string]string{}
	for _, e := range svc["Environment"] {
		for _, kv := range strings.Fields(e) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	exec := svc["ExecStart"]
	if len(exec) != 1 {
		t.Fatalf("ExecStart %q: want one", exec)
	}
	var args []string
	for _, w := range strings.Fields(exec[0]) {
		w = regexp.MustCompile(`\$\{(\w+)\}|\$(\w+)`).ReplaceAllStringFunc(w, func(m string) string {
			return env[strings.Trim(m, "${}")]
		})
		if w != "" {
			args = append(args, w)
		}
	}
	if len(args) < 2 || filepath.Base(args[0]) != "xdpcache" || args[1] != "serve" {
		t.Fatalf("ExecStart %q: want xdpcache serve ...", exec[0])
	}
	return args[2:]
}

// TestSystemdUnit checks the unit grants exactly the capabilities XDP needs, passes only flags
// serve accepts, and stops after serve has drained.
func TestSystemdUnit(t *testing.T) {
	svc := loadUnit(t)["Service"]
	var want []string
	for _, c := range wantCaps {
		want = append(want, "CAP_"+c)
	}
	for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		var got []string
		for _, v := range svc[key] {
			got = append(got, strings.Fields(v)...)
		}
		if !sameSet(got, want) {
			t.Errorf("%s = %q, want exactly %q", key, got, want)
		}
	}
	if v := svc["NoNewPrivileges"]; len(v) != 1 || v[0] != "yes" {
		t.Errorf("NoNewPrivileges = %q, want yes", v)
	}
	args := unitServeArgs(t)
	checkServeFlags(t, unitPath, args)
	for _, f := range []string{"--xdp-iface", "--metrics-addr"} {
		if flagValue(args, f) == "" {
			t.Errorf("ExecStart has no %s value", f)
		}
	}
	// Started means ready: ExecStartPost waits for /readyz on the address serve serves it on.
	post := svc["ExecStartPost"]
	if len(post) != 1 {
		t.Fatalf("ExecStartPost %q: want one, xdpcache ready", post)
	}
	pf := strings.Fields(post[0])
	if len(pf) < 2 || filepath.Base(pf[0]) != "xdpcache" || pf[1] != "ready" {
		t.Errorf("ExecStartPost %q: want xdpcache ready ...", post[0])
	} else if got, want := flagValue(pf[2:], "--metrics-addr"), flagValue(args, "--metrics-addr"); got != want {
		t.Errorf("ExecStartPost polls %q, serve's metrics are on %q", got, want)
	}
	// Reload is a takeover: SIGHUP to the main process, which hands the main PID over by
	// sd_notify, so the unit must take notifications from it.
	if v := svc["ExecReload"]; len(v) != 1 || strings.Join(strings.Fields(v[0]), " ") != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload = %q, want /bin/kill -HUP $MAINPID", v)
	}
	if v := svc["Type"]; len(v) != 1 || v[0] != "notify" {
		t.Errorf("Type = %q, want notify (serve reports READY and the successor's MAINPID)", v)
	}
	if v := svc["NotifyAccess"]; len(v) != 1 || (v[0] != "main" && v[0] != "all") {
		t.Errorf("NotifyAccess = %q, want main", v)
	}
	stop := svc["TimeoutStopSec"]
	if len(stop) != 1 {
		t.Fatalf("TimeoutStopSec %q: want one", stop)
	}
	secs, err := strconv.Atoi(stop[0])
	if err != nil {
		t.Fatalf("TimeoutStopSec %q: %v", stop[0], err)
	}
	if drain := shutdownTimeout(t, args); time.Duration(secs)*time.Second <= drain {
		t.Errorf("TimeoutStopSec %ds <= serve's shutdown timeout %v: systemd would SIGKILL mid-drain", secs, drain)
	}
}

func TestParseUnit(t *testing.T) {
	u, err := parseUnit("# c\n[Service]\nExecStart=/bin/x \\\n  --a 1 \\\n  --b 2\nAmbientCapabilities=CAP_A\nAmbientCapabilities=CAP_B\nCapabilityBoundingSet=CAP_X\nCapabilityBoundingSet=\nCapabilityBoundingSet=CAP_Y\n")
	if err != nil {
		t.Fatal(err)
	}
	svc := u["Service"]
	if got := svc["ExecStart"]; len(got) != 1 || strings.Join(strings.Fields(got[0]), " ") != "/bin/x --a 1 --b 2" {
		t.Errorf("ExecStart = %q", got)
	}
	if got := svc["AmbientCapabilities"]; !reflect.DeepEqual(got, []string{"CAP_A", "CAP_B"}) {
		t.Errorf("AmbientCapabilities = %q", got)
	}
	if got := svc["CapabilityBoundingSet"]; !reflect.DeepEqual(got, []string{"CAP_Y"}) {
		t.Errorf("CapabilityBoundingSet = %q, want the reset honoured", got)
	}
	if _, err := parseUnit("[Service]\nExecStart=/bin/x \\"); err == nil {
		t.Error("dangling continuation accepted")
	}
}
