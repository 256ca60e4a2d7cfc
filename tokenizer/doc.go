// Package tokenizer encodes text into token ids exactly as HuggingFace
// `tokenizers` does, for the tokenizer.json files of byte-level BPE models:
// GPT-2-style (ByteLevel pre-tokenizer with its own regex), Llama-3- and
// Qwen2-style (a Split regex followed by ByteLevel), and others built from the
// same components.
//
// Supported components (anything else is refused when the file is loaded,
// with an error naming the component):
//
//	normalizer      NFC, NFD, NFKC, NFKD, Lowercase, Sequence, none
//	pre_tokenizer   ByteLevel, Split (Regex or String; Isolated, Removed,
//	                MergedWithPrevious, MergedWithNext), Digits, Sequence
//	model           BPE (byte-level; ignore_merges; merges as "a b" or [a, b])
//	post_processor  ByteLevel, TemplateProcessing (single sequence), Sequence, none
//	decoder         ByteLevel (for Decode)
//	added_tokens    special and normal, with lstrip, rstrip, single_word and
//	                normalized as HF matches them
//
// Encode(text) is HF's encode(text) with add_special_tokens=True: the
// post-processor decides whether a BOS token is prepended (Llama-3 and
// DeepSeek templates add one; GPT-2, Qwen2 and kvtorch's reference model add
// none).
//
// Pre-tokenizer regexes use look-ahead, which Go's regexp lacks. The GPT-2,
// Llama-3 and Qwen2 patterns run on hand-written matchers (scan.go), checked
// against the regex engine; others run on github.com/dlclark/regexp2, whose
// Unicode classes (\s, \p{L}, \p{N}) match the Oniguruma engine that HF
// tokenizers uses.
package tokenizer
