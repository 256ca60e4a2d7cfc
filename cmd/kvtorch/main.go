// Command kvtorch creates low-rank (PCA) KV-cache compression presets for
// transformer language models exported to TorchScript.
//
// Results go to stdout, logs and progress to stderr. Exit status: 0 ok,
// 1 failure, 2 usage error.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// usageError marks errors in how the command was called (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "kvtorch",
		Usage:     "KV-cache compression presets for language models, measured, not guessed",
		UsageText: "kvtorch COMMAND [options]",
		Description: "kvtorch learns per-layer PCA bases of a model's keys and values from sample text\n" +
			"(running a TorchScript export of the model through libtorch) and picks the ranks\n" +
			"that compress the KV cache most within a perplexity budget.",
		Version:              version,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		HideVersion:          true,
		Commands: []*cli.Command{
			calibrateCommand,
			mergeCommand,
			evalCommand,
			tuneCommand,
			checkCommand,
			inspectCommand,
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
}

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	err := newApp(stdout, stderr).Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "kvtorch: "+oneLine(err.Error()))
	var ue usageError
	msg := err.Error()
	if errors.As(err, &ue) || strings.HasPrefix(msg, "flag provided but not defined") || strings.HasPrefix(msg, "Required flag") {
		return 2
	}
	return 1
}

// oneLine folds a multi-line message (libtorch's are) onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
