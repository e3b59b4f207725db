//! The saved HNSW index file (a bundle's `index.hnsw`, see `docs/bundle.md`): the graph in
//! the walk's layout, the build settings, sampled item vectors (so that a graph saved for
//! another catalogue is refused), and a sha256 of all of it (so that a damaged file is refused
//! rather than walked).
//!
//! Layout, little-endian: the tag `DPRHNSW2`; `u64` dimension, connectivity, expansion_add,
//! expansion_search (the default `ef`) and the byte length of the graph block; the graph block
//! ([`FlatGraph::to_bytes`]); `u64` sample count `s`, then the `s` sampled rows' vectors as
//! `f32`s (row `first + i * rows / s` for `i` in `0..s`); `u64` value graph count, then per
//! value graph ([`crate::index::subgraph`]) `u64` expansion_search, `u64` row count `r`, the
//! `r` item rows as `u32`s (ascending), `u64` byte length of its graph block and the block;
//! the sha256 of everything before it (32 bytes). Files of the second format (`DPRHNSW2`, no
//! value graphs) and the first (`DPRHNSW1`, also no expansion_search field) are still read.

use sha2::{Digest, Sha256};

use crate::index::graph::FlatGraph;

const MAGIC: &[u8; 8] = b"DPRHNSW3";
/// The second format: the same without value graphs.
const MAGIC_V2: &[u8; 8] = b"DPRHNSW2";
/// The first format: the second without the expansion_search field.
const MAGIC_V1: &[u8; 8] = b"DPRHNSW1";

/// Rows whose vectors the file keeps, to recognise the catalogue it was built for.
const SAMPLES: usize = 64;

/// What an index file holds.
pub struct Saved {
    pub graph: FlatGraph,
    /// The first item row (node `i` is row `start + i`).
    pub start: usize,
    pub dim: usize,
    pub connectivity: usize,
    pub expansion_add: usize,
    /// The default `ef` (`None` in a first-format file).
    pub expansion_search: Option<usize>,
    /// `(row, vector)` of the sampled rows.
    pub samples: Vec<(usize, Vec<f32>)>,
    pub subgraphs: Vec<SavedSubgraph>,
}

/// A value graph as the file keeps it.
pub struct SavedSubgraph {
    /// Item rows, ascending: node `i` is row `rows[i]`.
    pub rows: Vec<u32>,
    pub graph: FlatGraph,
    pub expansion_search: usize,
}

/// The item rows sampled from an index over rows `start..start + len`.
pub fn sample_rows(start: usize, len: usize) -> impl Iterator<Item = usize> {
    let count = len.min(SAMPLES);
    (0..count).map(move |i| start + i * len / count)
}

/// The file's bytes. `vector(row)` is item row `row`'s vector (`dim` floats); `subgraphs`
/// are the value graphs' `(rows, graph, expansion_search)`.
#[allow(clippy::too_many_arguments)]
pub fn encode<'a>(
    graph: &FlatGraph,
    start: usize,
    dim: usize,
    connectivity: usize,
    expansion_add: usize,
    expansion_search: usize,
    vector: impl Fn(usize) -> &'a [f32],
    subgraphs: &[(&[u32], &FlatGraph, usize)],
) -> Vec<u8> {
    let block = graph.to_bytes(start);
    let rows: Vec<usize> = sample_rows(start, graph.len()).collect();
    let mut out = Vec::with_capacity(block.len() + 64 + rows.len() * dim * 4 + 32);
    out.extend_from_slice(MAGIC);
    for value in [
        dim,
        connectivity,
        expansion_add,
        expansion_search,
        block.len(),
    ] {
        out.extend_from_slice(&(value as u64).to_le_bytes());
    }
    out.extend_from_slice(&block);
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for row in rows {
        out.extend(vector(row).iter().flat_map(|v| v.to_le_bytes()));
    }
    out.extend_from_slice(&(subgraphs.len() as u64).to_le_bytes());
    for (rows, graph, expansion_search) in subgraphs {
        out.extend_from_slice(&(*expansion_search as u64).to_le_bytes());
        out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        out.extend(rows.iter().flat_map(|r| r.to_le_bytes()));
        let block = graph.to_bytes(0);
        out.extend_from_slice(&(block.len() as u64).to_le_bytes());
        out.extend_from_slice(&block);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

fn u64_at(bytes: &[u8], at: usize) -> Result<usize, String> {
    let raw = bytes
        .get(at..at + 8)
        .ok_or("file too short")?
        .try_into()
        .expect("8 bytes");
    usize::try_from(u64::from_le_bytes(raw)).map_err(|_| "value too large".to_string())
}

/// Reads [`encode`]'s output; `Err` says why the bytes are not a sound index file.
pub fn decode(bytes: &[u8]) -> Result<Saved, String> {
    let tag = bytes.get(..MAGIC.len());
    let (fields, has_subgraphs) = match tag {
        Some(t) if t == MAGIC => (5, true),
        Some(t) if t == MAGIC_V2 => (5, false),
        Some(t) if t == MAGIC_V1 => (4, false),
        _ => (0, false),
    };
    if fields == 0 {
        return Err(
            "not a dpr HNSW index file (the index.usearch files of earlier dpr \
                    versions are not read: build the index and save it again)"
                .into(),
        );
    }
    let body_len = bytes.len().checked_sub(32).ok_or("file too short")?;
    let (body, digest) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch: the file is damaged or truncated".into());
    }
    let field = |i: usize| u64_at(body, MAGIC.len() + 8 * i);
    let (dim, connectivity, expansion_add) = (field(0)?, field(1)?, field(2)?);
    let expansion_search = if fields == 5 { Some(field(3)?) } else { None };
    let block_len = field(fields - 1)?;
    let block_at = MAGIC.len() + 8 * fields;
    let block_end = block_at
        .checked_add(block_len)
        .filter(|&end| end <= body.len())
        .ok_or("file too short")?;
    let (start, graph) = FlatGraph::from_bytes(&body[block_at..block_end])?;
    let count = u64_at(body, block_end)?;
    let rows: Vec<usize> = sample_rows(start, graph.len()).collect();
    let floats_at = block_end + 8;
    let floats_end = rows
        .len()
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(4))
        .and_then(|n| n.checked_add(floats_at));
    let sound = |end: usize| {
        if has_subgraphs {
            end <= body.len()
        } else {
            end == body.len()
        }
    };
    let floats_end = floats_end
        .filter(|&end| count == rows.len() && sound(end))
        .ok_or("bad sample block")?;
    let subgraphs = if has_subgraphs {
        decode_subgraphs(body, floats_end)?
    } else {
        Vec::new()
    };
    let floats: Vec<f32> = body[floats_at..floats_end]
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")))
        .collect();
    let samples = rows
        .into_iter()
        .zip(floats.chunks_exact(dim.max(1)))
        .map(|(row, v)| (row, v.to_vec()))
        .collect();
    Ok(Saved {
        graph,
        start,
        dim,
        connectivity,
        expansion_add,
        expansion_search,
        samples,
        subgraphs,
    })
}

/// The value graph section of `body` from byte `at` to its end.
fn decode_subgraphs(body: &[u8], mut at: usize) -> Result<Vec<SavedSubgraph>, String> {
    let next = |at: &mut usize| -> Result<usize, String> {
        let value = u64_at(body, *at)?;
        *at += 8;
        Ok(value)
    };
    let count = next(&mut at)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let expansion_search = next(&mut at)?;
        let len = next(&mut at)?;
        let rows_end = len
            .checked_mul(4)
            .and_then(|n| n.checked_add(at))
            .filter(|&end| end <= body.len())
            .ok_or("bad value graph block")?;
        let rows: Vec<u32> = body[at..rows_end]
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .collect();
        at = rows_end;
        let block_len = next(&mut at)?;
        let block_end = at
            .checked_add(block_len)
            .filter(|&end| end <= body.len())
            .ok_or("bad value graph block")?;
        let (start, graph) = FlatGraph::from_bytes(&body[at..block_end])?;
        at = block_end;
        if start != 0 || graph.len() != len || !rows.windows(2).all(|w| w[0] < w[1]) {
            return Err("bad value graph block".into());
        }
        out.push(SavedSubgraph {
            rows,
            graph,
            expansion_search,
        });
    }
    if at != body.len() {
        return Err("bad value graph block".into());
    }
    Ok(out)
}
