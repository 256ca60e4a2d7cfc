package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/tokenizer"
	"github.com/urfave/cli/v2"
)

var tokenizeCommand = &cli.Command{
	Name:      "tokenize",
	Usage:     "turn text into token ids (or ids back into text) with a model's tokenizer, exactly as HuggingFace does",
	ArgsUsage: "[FILE|FOLDER|-]...",
	UsageText: "kvtorch tokenize --model qwen.pt notes.txt\n" +
		"echo 'Hello world' | kvtorch tokenize --tokenizer tokenizer.json --json\n" +
		"kvtorch tokenize --model m.pt --json corpus/ > corpus.jsonl   # pre-tokenized input for --texts",
	Description: "Encodes each document (a *.txt file, a line of a *.jsonl file, or stdin) as HuggingFace\n" +
		"tokenizers' encode(text) does, with the tokenizer stored in a kvtorch model (--model, read\n" +
		"without loading the model) or a tokenizer.json (--tokenizer): one line of space-separated ids\n" +
		"per document, or with --json one JSON object per document ({\"source\": ..., \"input_ids\":\n" +
		"[...]}, which --texts of the other commands accepts as it is). Compare the ids with your own\n" +
		"tokenizer to be sure kvtorch reads your text as your model does. --decode turns ids (JSONL\n" +
		"input_ids, or lines of space-separated ids) back into text, as HF's decode(ids).",
	Flags: []cli.Flag{
		modelFlag,
		&cli.StringFlag{Name: "tokenizer", EnvVars: []string{"KVTORCH_TOKENIZER"}, Usage: "a HuggingFace tokenizer.json instead of the model's"},
		&cli.BoolFlag{Name: "no-special", Usage: "without the post-processor's special tokens (add_special_tokens=False)"},
		&cli.BoolFlag{Name: "decode", Usage: "ids to text instead"},
		jsonFlag,
	},
	Action: tokenizeAction,
}

func tokenizeAction(c *cli.Context) error {
	tok, err := loadTokenizer(c)
	if err != nil {
		return err
	}
	paths := c.Args().Slice()
	if len(paths) == 0 {
		paths = []string{"-"}
	}
	out := bufio.NewWriter(c.App.Writer)
	defer out.Flush()
	if c.Bool("decode") {
		return decodeIDs(c, tok, paths, out)
	}
	corpus, err := readTexts(c, paths)
	if err != nil {
		return err
	}
	return writeIDs(c, out, tok, corpus)
}

// writeIDs writes the ids of every document of corpus: a line of ids each,
// or JSONL with --json.
func writeIDs(c *cli.Context, out *bufio.Writer, tok *tokenizer.Tokenizer, corpus *texts.Corpus) error {
	enc := json.NewEncoder(out)
	for _, d := range corpus.Docs {
		if err := c.Context.Err(); err != nil {
			return err
		}
		doc, err := corpus.Load(d)
		if err != nil {
			return err
		}
		ids := doc.IDs
		switch {
		case doc.Pre:
		case c.Bool("no-special"):
			ids = tok.EncodePlain(doc.Text)
		default:
			ids = tok.Encode(doc.Text)
		}
		if c.Bool("json") {
			if ids == nil {
				ids = []int{} // an empty document: [], which reads back
			}
			if err := enc.Encode(texts.Record{Source: d.Source, IDs: &ids}); err != nil {
				return err
			}
			continue
		}
		for i, id := range ids {
			if i > 0 {
				out.WriteByte(' ')
			}
			out.WriteString(strconv.Itoa(id))
		}
		out.WriteByte('\n')
	}
	return nil
}

// loadTokenizer reads --tokenizer, or the tokenizer stored in the model
// (--model, or the bundled reference model) without loading the model.
func loadTokenizer(c *cli.Context) (*tokenizer.Tokenizer, error) {
	if p := c.String("tokenizer"); p != "" {
		if c.IsSet("model") {
			return nil, usagef("give --model or --tokenizer, not both")
		}
		return tokenizer.LoadFile(p)
	}
	path, err := modelPath(c)
	if err != nil {
		return nil, err
	}
	_, tj, err := kvfile.ReadModel(path)
	if err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(tj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tok, nil
}

// decodeIDs reads ids (JSONL with input_ids, or lines of space-separated
// ids) and prints each document's text.
func decodeIDs(c *cli.Context, tok *tokenizer.Tokenizer, paths []string, out *bufio.Writer) error {
	for _, p := range paths {
		f := os.Stdin
		if p != "-" {
			var err error
			if f, err = os.Open(p); err != nil {
				return err
			}
			defer f.Close()
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<30)
		for line := 1; sc.Scan(); line++ {
			text := strings.TrimSpace(sc.Text())
			if text == "" {
				continue
			}
			var ids []int
			if strings.HasPrefix(text, "{") {
				var rec struct {
					IDs []int `json:"input_ids"`
				}
				if err := json.Unmarshal([]byte(text), &rec); err != nil {
					return fmt.Errorf("%s:%d: %v", p, line, err)
				}
				ids = rec.IDs
			} else {
				for _, f := range strings.Fields(text) {
					id, err := strconv.Atoi(f)
					if err != nil || id < 0 {
						return fmt.Errorf("%s:%d: %q is not a token id", p, line, f)
					}
					ids = append(ids, id)
				}
			}
			decoded := tok.Decode(ids)
			if c.Bool("json") {
				b, _ := json.Marshal(map[string]any{"text": decoded})
				out.Write(append(b, '\n'))
			} else {
				out.WriteString(decoded)
				out.WriteByte('\n')
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}
