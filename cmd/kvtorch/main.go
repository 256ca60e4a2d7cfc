// Command kvtorch creates low-rank (PCA) KV-cache compression presets for
// transformer language models exported to TorchScript.
//
// Results go to stdout, logs and progress to stderr. Exit status: 0 ok,
// 1 failure, 2 usage error, 130/143 interrupted (SIGINT/SIGTERM).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/internal/atomicfile"
	"github.com/kvtorch/kvtorch/torch"
	"github.com/urfave/cli/v2"
)

// usageError marks errors in how the command was called (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "kvtorch",
		Usage:     "KV-cache compression presets for language models, measured, not guessed",
		UsageText: "kvtorch COMMAND [options] [arguments]",
		Description: "kvtorch learns PCA bases of a model's keys and values from sample text (running a\n" +
			"TorchScript export of the model through libtorch) and picks, per layer, the ranks and\n" +
			"latent bits that compress the KV cache most within a perplexity budget.\n\n" +
			"  kvtorch calibrate --model m.pt --texts calib/ --output calib.pt\n" +
			"  kvtorch tune --model m.pt --calibration calib.pt --texts heldout/ --bits 16,8,4 --output preset.json\n" +
			"  kvtorch check --preset preset.json",
		Version:              version,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			calibrateCommand,
			mergeCommand,
			evalCommand,
			tuneCommand,
			checkCommand,
			inspectCommand,
			tokenizeCommand,
			versionCommand,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("unknown command %q (see kvtorch --help)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err.Error()}
		},
		// Keep urfave/cli from exiting on its own, so main decides the status.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	for _, c := range app.Commands { // a bad flag of a command is a usage error too (exit 2, one line)
		c.OnUsageError = app.OnUsageError
	}
	return app
}

func main() {
	// Tensors of 4 MB and more come from mmap and go back to the system
	// when freed: with glibc's default they fragment the heap. On SmolLM2
	// (eval, 2044 tokens, CPU) peak memory 3.84 GB -> 2.23 GB for 11.3 s ->
	// 12.9 s; 1 MB gave 1.69 GB at 14.8 s (docs/BENCHMARKS.md).
	torch.MapLargeAllocations(4 << 20)
	// And on huge pages: eval --preset at 4,096 tokens on SmolLM2, 2 cores,
	// 86 s -> 74 s, system time 29.5 s -> 15.9 s (docs/BENCHMARKS.md).
	torch.HugePages()
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit status. SIGINT and
// SIGTERM cancel the work: temporary output files are removed at once, the
// command stops at its next check, and the status is 130 or 143.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	handled := make(chan os.Signal, 1) // the signal that stopped the work, or nil
	go func() {
		var got os.Signal
		select {
		case got = <-sigs:
			atomicfile.Abort() // no half-written file stays behind, whatever the work is doing
			cancel()
		case <-ctx.Done():
		}
		handled <- got
	}()
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, reorderArgs(app, args))
	cancel()
	if got := <-handled; got != nil {
		atomicfile.Resume() // the work has stopped; a later run in this process (the tests) may write again
		fmt.Fprintln(stderr, "kvtorch: interrupted")
		if got == syscall.SIGTERM {
			return 143
		}
		return 130
	}
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "kvtorch: "+strings.TrimPrefix(oneLine(err.Error()), "kvtorch: "))
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, kvtorch.ErrOption) || errors.Is(err, compress.ErrInvalid) {
		return 2
	}
	return 1
}

// oneLine folds a multi-line message (libtorch's are) onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// reorderArgs lets options follow positional arguments, as the README's
// examples write them (kvtorch merge s0.pt s1.pt --output calib.pt): after
// the command name, options (with their values) go first, arguments after,
// in their order. "--" ends the options.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	var cmd *cli.Command
	for _, c := range app.Commands {
		if c.Name == args[1] || c.HasName(args[1]) {
			cmd = c
		}
	}
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	flags, positional := []string{}, []string{}
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			positional = append(positional, rest[i+1:]...)
			break
		}
		if len(a) > 1 && strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(rest) {
				flags = append(flags, rest[i+1])
				i++
			}
			continue
		}
		positional = append(positional, a)
	}
	out := append([]string{args[0], args[1]}, flags...)
	if len(positional) > 0 {
		out = append(append(out, "--"), positional...)
	}
	return out
}
