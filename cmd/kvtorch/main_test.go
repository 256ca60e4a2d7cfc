package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/kvtorch/kvtorch/torch"
)

// runCLI runs the command line in-process and returns status, stdout, stderr.
func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"kvtorch"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// evalReport is what `kvtorch eval --json` prints.
type evalReport struct {
	Baseline float64 `json:"baseline_ppl"`
	Tokens   int     `json:"tokens"`
	Rows     []struct {
		Label string  `json:"label"`
		PPL   float64 `json:"ppl"`
		Ratio float64 `json:"compression_ratio"`
	} `json:"rows"`
}

// runEval runs `kvtorch eval --json` with args and decodes its report.
func runEval(t *testing.T, args ...string) evalReport {
	t.Helper()
	code, out, e := runCLI(append([]string{"eval", "--json"}, args...)...)
	if code != 0 {
		t.Fatal(e)
	}
	var rep evalReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"kvtorch  " + version, "libtorch " + torch.Version(), "devices  cpu"} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

func TestHelpListsCommands(t *testing.T) {
	code, out, _ := runCLI("--help")
	if code != 0 || !strings.Contains(out, "version") || !strings.Contains(out, "COMMANDS") {
		t.Fatalf("exit %d, help:\n%s", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"no-such-command"}, {"version", "--no-such-flag"}, {"version", "extra"}, {"check"},
		{"check", "--no-such-flag"}, {"eval", "--device", "tpu"}, {"calibrate", "--device", "tpu"}, {"tune", "--device", "tpu"},
		{"merge", "--device", "tpu", "s.pt"}, {"check", "--device", "tpu", "--preset", "p.json"},
		{"check", "--preset", "p.json", "--max-ppl-delta", "NaN"}, {"check", "--preset", "p.json", "--max-ppl-delta", "nan"},
		{"check", "--preset", "p.json", "--max-ppl-delta", "Inf"}, {"check", "--preset", "p.json", "--max-ppl-delta", "-0.1"},
		{"tune", "--target-ppl-delta", "NaN"}, {"tune", "--mixed-bits"}, {"tune", "--mixed-bits", "--bits", "8,4", "--basis", "head"},
		{"tune", "--mixed-bits", "--bits", "8,4", "--uniform"}} {
		code, _, errOut := runCLI(args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, "kvtorch: ") {
			t.Errorf("%v: last stderr line %q, want a one-line kvtorch error", args, last)
		}
	}
}

func TestOneLine(t *testing.T) {
	if got := oneLine("a\n  b\tc\n"); got != "a b c" {
		t.Fatalf("oneLine: got %q", got)
	}
}

// TestBudgetFromEnvironment: KVTORCH_BUDGET=nan is refused as --max-ppl-delta
// NaN is (issue 21: the gate passed with "budget +NaN%"). It runs in a child
// process: urfave/cli keeps a flag's value from the environment in the
// package-level flag, which would leak into later tests.
func TestBudgetFromEnvironment(t *testing.T) {
	if os.Getenv("KVTORCH_TEST_CHILD") == "budget" {
		code, _, e := runCLI("check", "--preset", "p.json")
		fmt.Print(e)
		os.Exit(code)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestBudgetFromEnvironment$")
	cmd.Env = append(os.Environ(), "KVTORCH_TEST_CHILD=budget", "KVTORCH_BUDGET=nan")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "want a fraction") {
		t.Fatalf("exit %v, output %q", err, out)
	}
}
