// Package tokenizer encodes text into token ids exactly as HuggingFace
// `tokenizers` does, for the tokenizer.json files of byte-level BPE models
// (GPT-2, Llama-3, Qwen2, SmolLM2 style) and of SentencePiece-style models
// (Llama-2, Mistral, Gemma style BPE with byte fallback, and Unigram).
//
// Supported components (anything else is refused when the file is loaded,
// with an error naming the component):
//
//	normalizer      NFC, NFD, NFKC, NFKD, Lowercase, Nmt, Prepend, Replace
//	                (String or Regex), Strip, Sequence, none
//	pre_tokenizer   ByteLevel, Split (Regex or String; Isolated, Removed,
//	                MergedWithPrevious, MergedWithNext), Digits, Metaspace
//	                (prepend_scheme always, first, never; split), Sequence
//	model           BPE (byte-level or with byte_fallback <0xNN> tokens;
//	                unk_token, fuse_unk, ignore_merges; merges as "a b" or
//	                [a, b]), Unigram (Viterbi, unk_id, byte_fallback)
//	post_processor  ByteLevel, TemplateProcessing (single sequence), Sequence, none
//	decoder         ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace,
//	                Sequence (for Decode)
//	added_tokens    special and normal, with lstrip, rstrip, single_word and
//	                normalized as HF matches them
//
// Refused by name: the Precompiled normalizer (a SentencePiece character map
// in a double-array trie applied per grapheme cluster; kvtorch cannot yet
// apply it exactly), WordPiece and WordLevel models, BPE dropout and
// continuing-subword prefixes. Text for a model with such a tokenizer can be
// given to kvtorch already tokenized (.jsonl lines with "input_ids").
//
// Encode(text) is HF's encode(text) with add_special_tokens=True: the
// post-processor decides whether a BOS token is prepended (Llama-2, Llama-3,
// Mistral and Gemma templates add one; GPT-2, Qwen2, SmolLM2 and kvtorch's
// reference model add none). Decode(ids) is HF's decode(ids), special tokens
// skipped.
//
// Exactness needs HF's own arithmetic in two places: Unigram scores are read
// as serde_json reads them (not always the nearest float64, and Viterbi
// near-ties depend on the last bit), and Unicode properties newer than Go's
// tables (Rust's char::is_numeric and to_lowercase; the normalization data of
// HF's older tables) come from generated tables (internal/gengaps).
//
// Pre-tokenizer regexes use look-ahead, which Go's regexp lacks. The GPT-2,
// Llama-3 and Qwen2 patterns run on hand-written matchers (scan.go), checked
// against the regex engine; others run on github.com/dlclark/regexp2, whose
// Unicode classes (\s, \p{L}, \p{N}) match the Oniguruma engine that HF
// tokenizers uses.
package tokenizer
