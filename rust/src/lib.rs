//! dpr's inference core, in the order a query flows through it:
//!
//! * [`bundle`]: read and validate a model bundle (config, items and ids, weights, checksums);
//! * [`nn`]: the networks (linear algebra, backbones, prompt encoder, intent head, steering);
//! * [`index`]: retrieval (exact scan, HNSW graph, the policy choosing between them);
//! * [`engine`]: the query pipeline tying them together;
//! * `python`: the PyO3 bindings, `dpr._core`.

pub mod bundle;
pub mod engine;
pub mod index;
pub mod nn;
mod python;
