// Package calibration runs text through a kvtorch model (docs/model-contract.md),
// hands every layer's keys and values to hooks, accumulates streaming
// statistics on the model's device, and computes per-layer, per-KV-head PCA
// bases of K and V with torch.linalg. It also evaluates perplexity with
// compression applied through the model's hook buffers, and searches ranks.
//
// The pieces:
//
//	model.go    Model: a TorchScript file checked against the contract
//	texts.go    reading calibration texts and batching token ids
//	hooks.go    Hook and Run: the forward loop that feeds hooks
//	stats.go    Stats: streaming count, sum and XᵀX per layer and head
//	pca.go      PCA of the statistics; the calibration file
package calibration
