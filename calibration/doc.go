// Package calibration runs text through a kvtorch model (docs/model-contract.md),
// hands every layer's keys and values to hooks, accumulates streaming
// statistics on the model's device, and computes per-layer, per-KV-head PCA
// bases of K and V with torch.linalg. It also evaluates perplexity with
// compression applied through the model's hook buffers, and searches ranks.
//
// The pieces:
//
//	model.go    Model: a TorchScript file checked against the contract
//	texts.go    reading texts (files, folders, JSONL, stdin) and cutting sequences
//	hooks.go    Hook and Run: the forward loop that feeds hooks; batches and padding masks
//	stats.go    Stats: streaming count, sum and XᵀX per layer and head, on the device
//	pca.go      RawMoments (mergeable, float64) and PCA with torch.linalg
//	file.go     the calibration and statistics files (docs/calibration-format.md)
//	eval.go     applying a setting through the hook buffers; perplexity on held-out text
//	preset.go   presets and their memory accounting (docs/preset-format.md)
//	tune.go     the searches: Tune and TuneUniform (the old tool's grid)
//
// Other analyses plug into the forward loop with a Hook:
//
//	err := calibration.Run(model, seqs, calibration.RunOptions{BatchSize: 8},
//		calibration.HookFunc(func(b *calibration.Batch, layer int, k, v *torch.Tensor) error {
//			// k, v: [B, H_kv, T, D] on the model's device; rows past b.Lengths are padding
//			return nil
//		}))
package calibration
