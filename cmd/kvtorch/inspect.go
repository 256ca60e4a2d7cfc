package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/pt"
	"github.com/urfave/cli/v2"
)

var inspectCommand = &cli.Command{
	Name:      "inspect",
	Usage:     "print the contents of a .pt file (kvtorch's or any torch.save file) or a kvtorch model's metadata",
	ArgsUsage: "FILE.pt",
	UsageText: "kvtorch inspect calib.pt --stats\nkvtorch inspect model.pt          # a TorchScript model: its kvtorch.json",
	Description: "Prints the value tree of a file written by torch.save (torch >= 1.6) or by kvtorch:\n" +
		"dicts, lists, tuples and scalars, and each tensor's dtype and shape; for a TorchScript\n" +
		"model, its kvtorch.json and extra files. Reads the file in pure Go; libtorch is not\n" +
		"involved (nothing of a model is run).",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "stats", Usage: "also print min, max and mean of each tensor (and NaN/Inf counts)", EnvVars: []string{"KVTORCH_STATS"}},
		&cli.BoolFlag{Name: "json", Usage: "print one JSON document instead of the tree"},
		&cli.IntFlag{Name: "max-items", Value: 20, Usage: "show at most this many items of each list, tuple or dict (0: all; --json shows all)"},
	},
	Action: inspectAction,
}

func inspectAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("inspect takes one FILE.pt argument")
	}
	path := c.Args().First()
	if script, err := pt.ReadScript(path, "kvtorch.json"); err == nil {
		return inspectModel(c, path, script)
	} else if !errors.Is(err, pt.ErrNotScript) {
		return err
	}
	f, err := pt.Open(path)
	if err != nil {
		return err
	}
	w := c.App.Writer
	if c.Bool("json") {
		v, err := jsonValue(f.Value, c.Bool("stats"), newBudget())
		if err != nil {
			return err
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{
			"file": path, "archive": f.Archive, "storages": f.Storages, "storage_bytes": f.StorageBytes, "value": v,
		})
	}
	fmt.Fprintf(w, "%s: torch.save archive %q, %d storages, %s\n", path, f.Archive, f.Storages, humanBytes(f.StorageBytes))
	p := &treePrinter{w: w, stats: c.Bool("stats"), maxItems: c.Int("max-items"), budget: newBudget()}
	err = p.print("", f.Value, 0)
	if errors.Is(err, errTooLarge) {
		fmt.Fprintf(w, "… stopped after %d lines: %s\n", maxShown, p.budget.why())
		return nil
	}
	return err
}

// maxShown bounds what inspect prints: a pickle can reference one value
// many times (sharing it), and printed out in full, 40 levels of pairs are
// 2^40 lines.
const maxShown = 100000

var errTooLarge = errors.New("inspect shows at most 100000 items")

// budget counts the items shown against maxShown, and notices values shown
// twice (shared parts of the pickle), to say why it ran out.
type budget struct {
	left   int
	seen   map[uintptr]bool
	shared bool
}

func newBudget() *budget { return &budget{left: maxShown, seen: map[uintptr]bool{}} }

// take counts v, or returns an error when the budget is spent.
func (b *budget) take(v any) error {
	if b.left--; b.left < 0 {
		return fmt.Errorf("inspect: %s (%w)", b.why(), errTooLarge)
	}
	var id uintptr
	switch x := v.(type) {
	case *pt.Dict:
		id = reflect.ValueOf(x).Pointer()
	case []any, pt.Tuple:
		if rv := reflect.ValueOf(x); rv.Len() > 0 {
			id = rv.Pointer()
		}
	}
	if id != 0 {
		b.shared = b.shared || b.seen[id]
		b.seen[id] = true
	}
	return nil
}

func (b *budget) why() string {
	if b.shared {
		return fmt.Sprintf("the value expands to more than %d items (it repeats shared parts)", maxShown)
	}
	return fmt.Sprintf("the value has more than %d items", maxShown)
}

type treePrinter struct {
	w        io.Writer
	stats    bool
	maxItems int
	budget   *budget
}

func (p *treePrinter) print(label string, v any, depth int) error {
	if err := p.budget.take(v); err != nil {
		return err
	}
	indent := strings.Repeat("  ", depth)
	if label != "" {
		label += ": "
	}
	line := indent + label
	switch x := v.(type) {
	case *pt.Dict:
		fmt.Fprintf(p.w, "%sdict (%d)\n", line, x.Len())
		for i, it := range x.Items() {
			if p.maxItems > 0 && i == p.maxItems {
				fmt.Fprintf(p.w, "%s  … %d more\n", indent, x.Len()-i)
				break
			}
			key := fmt.Sprint(it.Key)
			if _, isStr := it.Key.(string); !isStr {
				key = "[" + key + "]"
			}
			if err := p.print(key, it.Value, depth+1); err != nil {
				return err
			}
		}
	case []any:
		return p.seq(line, "list", x, depth)
	case pt.Tuple:
		return p.seq(line, "tuple", x, depth)
	case *pt.Tensor:
		fmt.Fprintf(p.w, "%stensor %s%s", line, x.DType(), fmtInts(x.Shape))
		if !x.IsContiguous() || x.Offset != 0 {
			fmt.Fprintf(p.w, " stride %s offset %d", fmtInts(x.Stride), x.Offset)
		}
		if x.Storage.Location != "" && x.Storage.Location != "cpu" {
			fmt.Fprintf(p.w, " (saved from %s)", x.Storage.Location)
		}
		if p.stats {
			st, err := x.Stats()
			if err != nil {
				return err
			}
			fmt.Fprintf(p.w, "  min %s  max %s  mean %s", fmtFloat(st.Min), fmtFloat(st.Max), fmtFloat(st.Mean))
			if st.NaN+st.Inf > 0 {
				fmt.Fprintf(p.w, "  NaN %d  Inf %d", st.NaN, st.Inf)
			}
		}
		fmt.Fprintln(p.w)
	case string:
		fmt.Fprintf(p.w, "%sstr %s\n", line, strconv.Quote(truncate(x, 200)))
	case int64:
		fmt.Fprintf(p.w, "%sint %d\n", line, x)
	case float64:
		fmt.Fprintf(p.w, "%sfloat %s\n", line, fmtFloat(x))
	case bool:
		fmt.Fprintf(p.w, "%sbool %t\n", line, x)
	case nil:
		fmt.Fprintf(p.w, "%sNone\n", line)
	default:
		return fmt.Errorf("inspect: unexpected value %T", v)
	}
	return nil
}

func (p *treePrinter) seq(line, kind string, xs []any, depth int) error {
	fmt.Fprintf(p.w, "%s%s (%d)\n", line, kind, len(xs))
	for i, e := range xs {
		if p.maxItems > 0 && i == p.maxItems {
			fmt.Fprintf(p.w, "%s  … %d more\n", strings.Repeat("  ", depth), len(xs)-i)
			break
		}
		if err := p.print("["+strconv.Itoa(i)+"]", e, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// jsonValue describes v for --json, at most *budget items. Non-finite
// floats become strings ("NaN", "+Inf", "-Inf"), which JSON cannot hold as
// numbers.
func jsonValue(v any, stats bool, budget *budget) (any, error) {
	if err := budget.take(v); err != nil {
		return nil, err
	}
	switch x := v.(type) {
	case *pt.Dict:
		items := []any{}
		for _, it := range x.Items() {
			jv, err := jsonValue(it.Value, stats, budget)
			if err != nil {
				return nil, err
			}
			items = append(items, map[string]any{"key": it.Key, "value": jv})
		}
		return map[string]any{"type": "dict", "items": items}, nil
	case []any, pt.Tuple:
		kind, xs := "list", []any(nil)
		if t, ok := x.(pt.Tuple); ok {
			kind, xs = "tuple", t
		} else {
			xs = x.([]any)
		}
		items := make([]any, len(xs))
		for i, e := range xs {
			jv, err := jsonValue(e, stats, budget)
			if err != nil {
				return nil, err
			}
			items[i] = jv
		}
		return map[string]any{"type": kind, "items": items}, nil
	case *pt.Tensor:
		m := map[string]any{"type": "tensor", "dtype": x.DType(), "shape": x.Shape, "stride": x.Stride, "offset": x.Offset}
		if stats {
			st, err := x.Stats()
			if err != nil {
				return nil, err
			}
			m["stats"] = map[string]any{"min": jsonFloat(st.Min), "max": jsonFloat(st.Max), "mean": jsonFloat(st.Mean), "nan": st.NaN, "inf": st.Inf}
		}
		return m, nil
	case string:
		return map[string]any{"type": "str", "value": x}, nil
	case int64:
		return map[string]any{"type": "int", "value": x}, nil
	case float64:
		return map[string]any{"type": "float", "value": jsonFloat(x)}, nil
	case bool:
		return map[string]any{"type": "bool", "value": x}, nil
	case nil:
		return map[string]any{"type": "none"}, nil
	}
	return nil, fmt.Errorf("inspect: unexpected value %T", v)
}

func jsonFloat(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	return f
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', 6, 64) }

func fmtInts(xs []int64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatInt(x, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// truncate shortens s to at most n bytes (on a character boundary) and an ellipsis.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func inspectModel(c *cli.Context, path string, script *pt.Script) error {
	raw, ok := script.Data["kvtorch.json"]
	if !ok {
		return fmt.Errorf("%s: a TorchScript file without kvtorch.json: not a kvtorch model (export it with python -m kvtorch.export)", path)
	}
	md, err := kvfile.ParseMetadata(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	names := script.Extras
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"file": path, "torchscript": true, "extra_files": names, "kvtorch": md})
	}
	w := c.App.Writer
	g := md.Geometry()
	fmt.Fprintf(w, "%s: TorchScript model (kvtorch model format %d), extra files %s\n", path, md.FormatVersion, strings.Join(names, ", "))
	fmt.Fprintf(w, "  name %s, architecture %s, %s, %d query heads\n", md.Name, md.Architecture, g, md.NHeads)
	fmt.Fprintf(w, "  keys %s, dtype %s, traced for %s, vocabulary %d, positions %d\n", md.KVSource, md.DType, md.Device, md.VocabSize, md.MaxPositions)
	fmt.Fprintf(w, "  KV cache: %d bytes per token uncompressed (16-bit)\n", g.TokenBytes())
	fmt.Fprintf(w, "  hooks %s, %s\n", md.Hook.K, md.Hook.V)
	return nil
}
