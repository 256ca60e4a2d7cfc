// Package calibration is kvtorch's work on a model's device: a TorchScript
// model checked against the model contract (docs/model-contract.md), the
// forward loop that hands every layer's keys and values to hooks, streaming
// statistics of K and V accumulated there, PCA with torch.linalg, writing a
// compression setting into the model's hook buffers, and perplexity. The
// workflow over it (open a model once, calibrate, measure, tune) is package
// kvtorch; the data it reads and writes is package kvfile.
//
// The pieces:
//
//	model.go       Model: a TorchScript file checked against the contract
//	hooks.go       Hook and Run: the forward loop that feeds hooks; batches and masks
//	stats.go       Stats: streaming joint moments per layer, on the device
//	pca.go         PCA: per-head, pooled and joint bases with torch.linalg
//	apply.go       Apply: a compress.Setting into the hook buffers (formats 1 and 2)
//	perplexity.go  Perplexity of the model as configured, on held-out windows
//
// Other analyses plug into the forward loop with a Hook:
//
//	err := calibration.Run(ctx, model, seqs, calibration.RunOptions{BatchSize: 8},
//		calibration.HookFunc(func(b *calibration.Batch, layer int, k, v *torch.Tensor) error {
//			// k, v: [B, H_kv, T, D] on the model's device; rows past b.Lengths are padding
//			return nil
//		}))
package calibration
