package main

import (
	"fmt"
	"time"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/torch"
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
		var dev torch.Device
		if !c.Bool("stats-only") {
			if err := checkDevice(c); err != nil {
				return err
			}
			dev, _ = torch.ParseDevice(c.String("device"))
			if err := dev.Check(); err != nil {
				return err
			}
		}
		start := time.Now()
		var shards []*kvfile.Stats
		for _, p := range c.Args().Slice() {
			s, err := kvfile.LoadStats(p)
			if err != nil {
				return err
			}
			shards = append(shards, s)
		}
		merged, err := kvfile.MergeStats(shards)
		if err != nil {
			return err
		}
		if p := c.String("stats-out"); p != "" {
			if err := merged.Save(p); err != nil {
				return err
			}
		}
		if c.Bool("stats-only") {
			if !c.Bool("quiet") {
				fmt.Fprintf(c.App.ErrWriter, "merged %d shards, %d tokens; wrote statistics %s\n", len(shards), merged.Tokens(), c.String("stats-out"))
			}
			return nil
		}
		cal, err := kvtorch.FromStats(c.Context, merged, dev)
		if err != nil {
			return err
		}
		if err := cal.Save(out); err != nil {
			return err
		}
		return report(c, cal, out, time.Since(start), 0)
	},
}
