// Package texts is kvtorch's handling of text, pure Go: locating documents
// (files, folders of *.txt and *.jsonl, stdin), reading them a piece at a
// time so that memory follows the tokens asked for whatever a text's shape,
// sampling documents (calibration) and windows spread over all of the text
// (evaluation), tokenizing, and cutting sequences and windows that start
// with the model's BOS when it wants one. Its errors name files and what is
// wrong with them, never a command line's flags.
//
//	corpus.go      Corpus, ReadCorpus: documents located and hashed, files read once
//	read.go        a document's tokens from any byte of it, a piece at a time
//	sequences.go   Sequences: calibration sequences of documents
//	windows.go     Windows: evaluation windows, all of the text or a spread sample
//	fingerprint.go lines sampled by content, to recognise calibration text
package texts
