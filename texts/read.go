package texts

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/kvtorch/kvtorch/tokenizer"
)

// chunkBytes is the most text tokenized at once: larger documents are read
// and tokenized a piece at a time, so that memory follows the piece, not
// the document.
const chunkBytes = 1 << 20

// cutSlack is how far past its size a piece may run to end at a good place.
const cutSlack = 64 << 10

// snapSlack is how far from a starting point in the middle of a document
// reading looks for the start of a line.
const snapSlack = 4 << 10

// read returns document d's token ids from byte from of the document (0:
// its start; elsewhere reading starts at the next line break, else the next
// space, within snapSlack): at least want of them when it has that many
// (want <= 0: all). Text is tokenized without the tokenizer's
// post-processor (BOS and such are the caller's: the model's metadata says
// what it wants), a piece at a time, read from the file as it goes; the
// lines of what is read are noted for SharedText. Pre-tokenized documents
// give their ids (from a position proportional to from).
func (c *Corpus) read(tok *tokenizer.Tokenizer, vocab int, d Doc, from int64, want int) ([]int, error) {
	if d.jsonl {
		doc, err := c.Load(d)
		if err != nil {
			return nil, err
		}
		if doc.Pre {
			for _, id := range doc.IDs {
				if id >= vocab {
					return nil, fmt.Errorf("texts: %s: token id %d is outside the model's vocabulary of %d", d.Source, id, vocab)
				}
			}
			return doc.IDs[from*int64(len(doc.IDs))/max(d.n, 1):], nil
		}
		text := []byte(doc.Text)
		at := from * int64(len(text)) / max(d.n, 1)
		return c.pieces(tok, bytes.NewReader(text), int64(len(text)), at, want, d.Source)
	}
	f, err := c.open(d.File)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := io.NewSectionReader(f.(io.ReaderAt), d.off, d.n) // *os.File, or stdin's *bytes.Reader
	return c.pieces(tok, r, d.n, from, want, d.Source)
}

// pieces tokenizes text r of n bytes from byte from, a piece at a time.
func (c *Corpus) pieces(tok *tokenizer.Tokenizer, r io.ReaderAt, n, from int64, want int, source string) ([]int, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(r, from, n-from), 1<<16)
	var ids []int
	var carry []byte
	first := true
	for want <= 0 || len(ids) < want {
		size := chunkBytes // as much as a few tokens need, when few are wanted
		if want > 0 {
			size = min(size, max(cutSlack, 16*(want-len(ids))))
		}
		buf := make([]byte, max(size+cutSlack, len(carry)))
		copy(buf, carry)
		got, err := io.ReadFull(br, buf[len(carry):])
		buf = buf[:len(carry)+got]
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return nil, fmt.Errorf("texts: %s: %w", source, err)
		}
		if first {
			if from == 0 {
				buf = trimBOM(buf, 0)
			} else {
				buf = buf[snap(buf):]
			}
			first = false
		}
		cut := len(buf)
		if !last {
			cut = cutPoint(buf, min(size, len(buf)))
		}
		c.note(buf[:cut])
		ids = append(ids, tok.EncodePlain(string(buf[:cut]))...)
		carry = append([]byte(nil), buf[cut:]...)
		if last && len(carry) == 0 {
			break
		}
	}
	return ids, nil
}

// snap is where text read from the middle of a document starts: after the
// first line break within snapSlack, else after the first space, else at
// the first character boundary.
func snap(b []byte) int {
	head := b[:min(len(b), snapSlack)]
	for _, sep := range []byte{'\n', ' '} {
		if i := bytes.IndexByte(head, sep); i >= 0 {
			return i + 1
		}
	}
	i := 0
	for i < len(b) && !utf8.RuneStart(b[i]) {
		i++
	}
	return i
}

// cutPoint is where a piece of b ends, at or after from: after the first
// blank line, else line break, else space at or after from; else at the
// first character boundary.
func cutPoint(b []byte, from int) int {
	rest := b[from:]
	for _, sep := range []string{"\n\n", "\n", " "} {
		if i := bytes.Index(rest, []byte(sep)); i >= 0 {
			return from + i + len(sep)
		}
	}
	for from < len(b) && !utf8.RuneStart(b[from]) {
		from++
	}
	return from
}
