package main

import (
	"fmt"

	"github.com/kvtorch/kvtorch"
	"github.com/urfave/cli/v2"
)

var mergeCommand = &cli.Command{
	Name:      "merge",
	Usage:     "sum statistics shards (calibrate --stats-out) into one calibration",
	ArgsUsage: "STATS.pt...",
	UsageText: "kvtorch merge stats-*.pt --output calib.pt\n" +
		"kvtorch merge stats-*.pt --stats-out all.pt --stats-only   # no PCA: works without libtorch",
	Description: "Each shard holds the count, sum and XᵀX of one part of the calibration text, computed\n" +
		"anywhere (e.g. one batch job per shard); merged, they give exactly the calibration of all\n" +
		"the text at once. The shards must come from the same model file (same sha256) with the same\n" +
		"sink tokens left out, and no text may be in two shards.",
	Flags: []cli.Flag{
		outputFlag("calib.pt", "calibration file to write"),
		&cli.StringFlag{Name: "stats-out", Usage: "also write the merged statistics"},
		&cli.BoolFlag{Name: "stats-only", Usage: "write only --stats-out, no PCA (needs no libtorch)"},
		&cli.StringFlag{Name: "device", Value: "cpu", EnvVars: []string{"KVTORCH_DEVICE"}, Usage: "device for the PCA"},
		quietFlag,
		jsonFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usagef("merge needs at least one STATS.pt file")
		}
		if c.Bool("stats-only") && c.String("stats-out") == "" {
			return usagef("--stats-only needs --stats-out")
		}
		out := c.String("output")
		if c.Bool("stats-only") {
			out = ""
		}
		if err := checkOutputs(c.Args().Slice(), output{"output", out}, output{"stats-out", c.String("stats-out")}); err != nil {
			return err
		}
		if err := checkDevice(c); err != nil && !c.Bool("stats-only") {
			return err
		}
		res, err := kvtorch.Merge(c.Context, c.Args().Slice(), c.String("device"), c.Bool("stats-only"))
		if err != nil {
			return err
		}
		if err := writeCalibration(c, res, out); err != nil {
			return err
		}
		if res.Calibration == nil {
			if !c.Bool("quiet") {
				fmt.Fprintf(c.App.ErrWriter, "merged %d shards, %d tokens; wrote statistics %s\n", c.NArg(), res.Stats.Tokens(), c.String("stats-out"))
			}
			return nil
		}
		return report(c, res, out)
	},
}
