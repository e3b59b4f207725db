//! Retrieval: the exact inner-product scan, the HNSW graph (built by usearch, walked by dpr,
//! saved in a flat file beside usearch's), the row sets filters select, and the policy
//! choosing between them.

pub mod exact;
mod graph;
pub mod half;
pub mod hnsw;
pub mod policy;
pub mod rank;
pub mod rowset;
