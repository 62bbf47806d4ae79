package archtest

import (
	"bufio"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/instactl/instactl/"

// testSupport are packages only tests and benchmarks import; they may import anything.
func testSupport(pkg string) bool {
	return strings.HasPrefix(pkg, "bench/") || strings.HasSuffix(pkg, "/cloudtest") || strings.HasSuffix(pkg, "/apptest") || strings.HasSuffix(pkg, "/awsfault") || pkg == "internal/archtest"
}

// row is one line of the table: packages on a layer and what they import.
type row struct {
	layer   int
	imports []string
}

// readTable parses the first code block of docs/architecture.md.
func readTable(t *testing.T) map[string]*row {
	t.Helper()
	f, err := os.Open("../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	table := map[string]*row{}
	var last []string
	layer, fences := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			if fences++; fences == 2 {
				break
			}
			continue
		}
		if fences != 1 || strings.HasPrefix(line, "layer") {
			continue
		}
		line, _, _ = strings.Cut(line, "(")
		if strings.HasPrefix(line, strings.Repeat(" ", 20)) { // a continuation of the imports above
			for _, n := range last {
				table[n].imports = append(table[n].imports, strings.Fields(line)...)
			}
			continue
		}
		left, right, arrow := strings.Cut(line, "──►")
		names := strings.Fields(left)
		if len(names) > 0 {
			if n, err := strconv.Atoi(names[0]); err == nil {
				layer, names = n, names[1:]
			}
		}
		if len(names) > 0 {
			last = names
			for _, n := range names {
				table[n] = &row{layer: layer}
			}
		}
		if arrow {
			for _, n := range last {
				table[n].imports = append(table[n].imports, strings.Fields(right)...)
			}
		}
	}
	if len(table) == 0 {
		t.Fatal("no package table in docs/architecture.md")
	}
	return table
}

// TestArchitecture: the table in docs/architecture.md lists every package with exactly its
// in-repo imports, and every import points to a lower layer.
func TestArchitecture(t *testing.T) {
	table := readTable(t)
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}:{{join .Imports " "}}`, module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imps, _ := strings.Cut(line, ":")
		pkg = strings.TrimPrefix(pkg, module)
		if testSupport(pkg) {
			continue
		}
		seen[pkg] = true
		r, ok := table[pkg]
		if !ok {
			t.Errorf("package %s is not in the table of docs/architecture.md: add it on its layer with its imports", pkg)
			continue
		}
		var got []string
		for _, imp := range strings.Fields(imps) {
			if strings.HasPrefix(imp, module) {
				got = append(got, strings.TrimPrefix(imp, module))
			}
		}
		want := slices.Clone(r.imports)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s imports %v; docs/architecture.md says %v", pkg, got, want)
		}
		for _, imp := range got {
			if ir, ok := table[imp]; ok && ir.layer <= r.layer {
				t.Errorf("%s (layer %d) imports %s (layer %d): an arrow that does not point down", pkg, r.layer, imp, ir.layer)
			}
			if testSupport(imp) {
				t.Errorf("%s imports the test-support package %s", pkg, imp)
			}
		}
	}
	for pkg := range table {
		if !seen[pkg] {
			t.Errorf("docs/architecture.md lists %s, which does not exist", pkg)
		}
	}
}

// TestTopologyIsAsked: commands ask the topology which host is primary now; the topology never
// asks them back. None of the packages that consume it is among its dependencies, direct or not.
func TestTopologyIsAsked(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", module+"topology").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	for _, consumer := range []string{"backup", "shardmove", "deploy", "internal/status", "internal/cli"} {
		if slices.Contains(deps, module+consumer) {
			t.Errorf("topology depends on %s, which asks it: the arrow must point from %s to topology only", consumer, consumer)
		}
	}
}
