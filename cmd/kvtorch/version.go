package main

import (
	"fmt"
	"runtime"

	"github.com/kvtorch/kvtorch/torch"
	"github.com/urfave/cli/v2"
)

// version is kvtorch's version; release builds set it with
// -ldflags "-X main.version=...".
var version = "0.1.0-dev"

var versionCommand = &cli.Command{
	Name:      "version",
	Usage:     "print the kvtorch version, the libtorch it runs against and the devices it sees",
	ArgsUsage: " ",
	Action: func(c *cli.Context) error {
		if c.NArg() > 0 {
			return usagef("version takes no arguments")
		}
		w := c.App.Writer
		fmt.Fprintf(w, "kvtorch  %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		fmt.Fprintf(w, "libtorch %s\n", torch.Version())
		fmt.Fprintf(w, "devices  cpu")
		for i := 0; i < torch.CUDADeviceCount(); i++ {
			fmt.Fprintf(w, ", %s", torch.CUDA(i))
		}
		fmt.Fprintln(w)
		if !torch.CUDAAvailable() {
			fmt.Fprintln(w, "cuda     not available")
		}
		return nil
	},
}
