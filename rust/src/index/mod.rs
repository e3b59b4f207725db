//! Retrieval: the exact inner-product scan, the HNSW graph (built by dpr's builder, walked by
//! dpr's search, saved in dpr's own file), the row sets filters select, and the policy
//! choosing between them.

mod build;
mod codes;
pub mod compact;
pub mod exact;
mod file;
mod gather;
mod graph;
pub mod hnsw;
mod int8;
pub(crate) mod pages;
pub mod policy;
mod pool;
pub mod rank;
pub mod rowset;
pub mod subgraph;
