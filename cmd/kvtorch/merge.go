package main

import (
	"time"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/torch"
	"github.com/urfave/cli/v2"
)

var mergeCommand = &cli.Command{
	Name:      "merge",
	Usage:     "sum statistics shards (calibrate --stats-out) into one calibration",
	ArgsUsage: "STATS.pt...",
	Description: "Each shard holds the count, sum and XᵀX of one part of the calibration text, computed\n" +
		"anywhere (e.g. one batch job per shard); merged, they give exactly the calibration of all\n" +
		"the text at once. The shards must come from the same model file (same sha256).",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Value: "calib.pt", Usage: "calibration file to write"},
		&cli.StringFlag{Name: "stats-out", Usage: "also write the merged statistics"},
		&cli.StringFlag{Name: "device", Value: "cpu", Usage: "device for the PCA"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no summary on stderr"},
		&cli.BoolFlag{Name: "json", Usage: "print a JSON summary on stdout"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usagef("merge needs at least one STATS.pt file")
		}
		dev, err := torch.ParseDevice(c.String("device"))
		if err != nil {
			return usagef("%v", err)
		}
		if err := dev.Check(); err != nil {
			return err
		}
		start := time.Now()
		var shards []*calibration.StatsFile
		for _, p := range c.Args().Slice() {
			s, err := calibration.LoadStats(p)
			if err != nil {
				return err
			}
			shards = append(shards, s)
		}
		merged, err := calibration.MergeStats(shards)
		if err != nil {
			return err
		}
		merged.Options.Device = dev.String()
		cal, err := merged.Calibrate(dev)
		if err != nil {
			return err
		}
		if p := c.String("stats-out"); p != "" {
			if err := merged.Save(p); err != nil {
				return err
			}
		}
		if err := cal.Save(c.String("out")); err != nil {
			return err
		}
		return report(c, cal, c.String("out"), time.Since(start), 0)
	},
}
