package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/internal/atomicfile"
	"github.com/kvtorch/kvtorch/internal/regfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
	"github.com/urfave/cli/v2"
)

// The flags several commands share, each settable from a KVTORCH_*
// environment variable.
var (
	modelFlag = &cli.StringFlag{Name: "model", Aliases: []string{"m"}, EnvVars: []string{"KVTORCH_MODEL"},
		Usage: "TorchScript model (docs/model-contract.md); default: the bundled reference model"}
	calibrationFlag = &cli.StringFlag{Name: "calibration", Aliases: []string{"c"}, Value: "calib.pt", EnvVars: []string{"KVTORCH_CALIBRATION"},
		Usage: "calibration file (kvtorch calibrate)"}
	deviceFlag = &cli.StringFlag{Name: "device", EnvVars: []string{"KVTORCH_DEVICE"},
		Usage: "cpu, cuda or cuda:N (default: the device the model was traced for)"}
	seqLenFlag = &cli.IntFlag{Name: "seq-len", EnvVars: []string{"KVTORCH_SEQ_LEN"},
		Usage: "tokens per window (sequence), BOS included; longer texts are cut into several (default: the model's context, at most 4096)"}
	batchFlag = func(cuda int) *cli.IntFlag {
		return &cli.IntFlag{Name: "batch-size", EnvVars: []string{"KVTORCH_BATCH_SIZE"},
			Usage: fmt.Sprintf("windows (sequences) per forward pass (default: %d on CUDA, 1 on the CPU)", cuda)}
	}
	maxTokensFlag = &cli.IntFlag{Name: "max-tokens", EnvVars: []string{"KVTORCH_MAX_TOKENS"},
		Usage: "measure at most this many predicted tokens (0: all the text; tokenization stops there)"}
	contextFlag = &cli.IntFlag{Name: "context", Value: 4096, EnvVars: []string{"KVTORCH_CONTEXT"},
		Usage: "context length at which compression ratios are counted (sink tokens cost full size)"}
	sinksFlag = &cli.IntFlag{Name: "sinks", Value: kvtorch.DefaultSinks, EnvVars: []string{"KVTORCH_SINKS"},
		Usage: "first tokens of every sequence kept uncompressed (attention sinks; 0: none)",
		Action: func(_ *cli.Context, v int) error {
			if v < 0 {
				return fmt.Errorf("%w: --sinks %d: a count of tokens (0: none)", kvtorch.ErrOption, v)
			}
			return nil
		}}
	recentFlag = &cli.IntFlag{Name: "recent", EnvVars: []string{"KVTORCH_RECENT"},
		Usage: "recent window: every query takes the uncompressed K/V of its last N positions (counted at full size at --context)",
		Action: func(_ *cli.Context, v int) error {
			if v < 0 {
				return fmt.Errorf("%w: --recent %d: a count of tokens (0: none)", kvtorch.ErrOption, v)
			}
			return nil
		}}
	outputFlag = func(def, usage string) *cli.StringFlag {
		return &cli.StringFlag{Name: "output", Aliases: []string{"o", "out"}, Value: def, EnvVars: []string{"KVTORCH_OUTPUT"}, Usage: usage}
	}
	quietFlag = &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"KVTORCH_QUIET"}, Usage: "no progress or summary on stderr"}
	jsonFlag  = &cli.BoolFlag{Name: "json", EnvVars: []string{"KVTORCH_JSON"}, Usage: "print one JSON document on stdout"}
	textsFlag = func(usage string) *cli.StringSliceFlag {
		return &cli.StringSliceFlag{Name: "texts", Aliases: []string{"t"}, EnvVars: []string{"KVTORCH_TEXTS"}, Usage: usage}
	}
)

// projectRoot finds the kvtorch checkout the binary belongs to (bin/kvtorch
// -> the folder above), for the bundled reference model and texts; then the
// working directory. KVTORCH_ROOT overrides both.
func projectRoot() string {
	if r := os.Getenv("KVTORCH_ROOT"); r != "" {
		return r
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		candidates = append(candidates, filepath.Dir(filepath.Dir(exe)))
	}
	if wd, err := os.Getwd(); err == nil {
		candidates = append(candidates, wd, filepath.Dir(wd), filepath.Dir(filepath.Dir(wd)))
	}
	for _, c := range candidates {
		if _, err := os.Stat(filepath.Join(c, "testdata", "refmodel.json")); err == nil {
			return c
		}
	}
	return "."
}

// modelPath returns --model or the bundled reference model.
func modelPath(c *cli.Context) (string, error) {
	if p := c.String("model"); p != "" {
		return p, nil
	}
	p := filepath.Join(projectRoot(), "build", "refmodel.pt")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no --model given and the bundled reference model %s is missing (run `make deps`)", p)
	}
	return p, nil
}

// textPaths returns --texts or the bundled texts of kind ("calib" or "eval").
func textPaths(c *cli.Context, kind string) []string {
	if ps := c.StringSlice("texts"); len(ps) > 0 {
		return ps
	}
	return []string{filepath.Join(projectRoot(), "testdata", kind)}
}

// openModel opens --model (or the bundled one) on --device.
func openModel(c *cli.Context) (*kvtorch.Model, error) {
	path, err := modelPath(c)
	if err != nil {
		return nil, err
	}
	return kvtorch.Open(path, kvtorch.OpenOptions{Device: c.String("device")})
}

// output is an output file named by a flag; an empty path is an output not
// asked for.
type output struct{ flag, path string }

// checkOutputs refuses, before any work starts, outputs that are an input
// or another output (the same file by path, link or hard link), outputs in
// a folder that does not exist or cannot be written, and outputs that exist
// but are not regular files (a FIFO, /dev/null, a folder). Outputs are
// checked in the order given, so the message is the same on every run.
func checkOutputs(inputs []string, outputs ...output) error {
	type file struct {
		what, path string
		info       os.FileInfo
	}
	var in []file
	for _, p := range inputs {
		abs, _ := filepath.Abs(p)
		st, _ := os.Stat(p)
		in = append(in, file{"input " + p, abs, st})
	}
	var out []file
	for _, o := range outputs {
		if o.path == "" {
			continue
		}
		flag, p := o.flag, o.path
		abs, _ := filepath.Abs(p)
		dir := filepath.Dir(abs)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return usagef("--%s %s: the folder %s does not exist", flag, p, dir)
		}
		st, err := os.Stat(p)
		if err == nil && !st.Mode().IsRegular() {
			return usagef("--%s %s: %s, not a file kvtorch may replace", flag, p, regfile.Describe(st.Mode()))
		}
		if err := atomicfile.CheckWritable(p); err != nil {
			return usagef("--%s %s: %v", flag, p, err)
		}
		f := file{"--" + flag, abs, st}
		for _, g := range append(in, out...) {
			if g.path == f.path || (g.info != nil && f.info != nil && os.SameFile(g.info, f.info)) {
				return usagef("--%s %s is also %s: it would be overwritten; choose another name", flag, p, g.what)
			}
		}
		out = append(out, f)
	}
	return nil
}

// readTexts reads a corpus, with stdin for "-", and notes on stderr (unless
// --quiet) the files left out as copies of others.
func readTexts(c *cli.Context, paths []string) (*texts.Corpus, error) {
	corpus, err := texts.ReadCorpus(paths, os.Stdin)
	if err != nil {
		return nil, err
	}
	if !c.Bool("quiet") {
		for _, d := range corpus.Duplicates {
			fmt.Fprintf(c.App.ErrWriter, "kvtorch: note: %s has the same content as %s: read once\n", d.Path, d.SameAs)
		}
	}
	return corpus, nil
}

// checkDevice refuses a --device that names no device kvtorch knows (exit
// 2), before any work; whether the device exists is checked when it is used.
func checkDevice(c *cli.Context) error {
	if d := c.String("device"); d != "" {
		if _, err := torch.ParseDevice(d); err != nil {
			return usagef("--device %s: want cpu, cuda or cuda:N", d)
		}
	}
	return nil
}

// nonNegative refuses negative values of integer flags (exit 2).
func nonNegative(c *cli.Context, names ...string) error {
	for _, n := range names {
		if c.Int(n) < 0 {
			return usagef("--%s %d: must not be negative", n, c.Int(n))
		}
	}
	return nil
}
