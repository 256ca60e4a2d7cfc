package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/torch"
	"github.com/urfave/cli/v2"
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

// bundledModel is the reference model exported by `make deps`.
func bundledModel() string { return filepath.Join(projectRoot(), "build", "refmodel.pt") }

func bundledTexts(kind string) string { return filepath.Join(projectRoot(), "testdata", kind) }

// modelPath returns --model or the bundled reference model.
func modelPath(c *cli.Context) (string, error) {
	if p := c.String("model"); p != "" {
		return p, nil
	}
	p := bundledModel()
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no --model given and the bundled reference model %s is missing (run `make deps`)", p)
	}
	return p, nil
}

// textPaths returns --texts or the bundled texts of kind ("calib" or "eval").
func textPaths(c *cli.Context, flag, kind string) []string {
	if ps := c.StringSlice(flag); len(ps) > 0 {
		return ps
	}
	return []string{bundledTexts(kind)}
}

// chooseDevice resolves --device against the device the model was traced
// for: a traced file runs only there.
func chooseDevice(flagValue, traced string) (torch.Device, error) {
	want := traced
	if want == "" {
		want = "cpu"
	}
	if flagValue != "" {
		dev, err := torch.ParseDevice(flagValue)
		if err != nil {
			return torch.Device{}, usagef("%v", err)
		}
		tdev, _ := torch.ParseDevice(want)
		if dev.Type != tdev.Type {
			return torch.Device{}, fmt.Errorf("the model was traced for %s and runs only there, not on %s (export it again with --device %s)", want, dev, dev)
		}
		return dev, dev.Check()
	}
	dev, err := torch.ParseDevice(want)
	if err != nil {
		return torch.Device{}, fmt.Errorf("model metadata: %w", err)
	}
	return dev, dev.Check()
}

// loadModel reads the model's metadata, picks the device and loads it.
func loadModel(c *cli.Context) (*calibration.Model, error) {
	path, err := modelPath(c)
	if err != nil {
		return nil, err
	}
	md, err := calibration.ReadMetadata(path)
	if err != nil {
		return nil, err
	}
	dev, err := chooseDevice(c.String("device"), md.Device)
	if err != nil {
		return nil, err
	}
	return calibration.LoadModel(path, dev)
}

var deviceFlag = &cli.StringFlag{Name: "device", Usage: "cpu, cuda or cuda:N (default: the device the model was traced for)", EnvVars: []string{"KVTORCH_DEVICE"}}

var modelFlag = &cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "TorchScript model (docs/model-contract.md); default: the bundled reference model", EnvVars: []string{"KVTORCH_MODEL"}}
