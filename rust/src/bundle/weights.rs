//! `weights.safetensors`: the one table of tensor names and shapes a configuration implies,
//! and the reader that holds the file to it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::config::{BackboneConfig, IntentConfig, RawConfig, SteerConfig};
use super::items::{Items, RawAttribute};
use super::{BundleError, CONFIG_FILE, WEIGHTS_FILE};

/// A float32 tensor copied out of the safetensors file (aligned, owned).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub(super) struct Weights {
    pub(super) floats: HashMap<String, Tensor>,
    /// Attribute name → (shape, uint8 matrix).
    pub(super) attributes: HashMap<String, (Vec<usize>, Vec<u8>)>,
}

/// Prefix of the uint8 attribute matrices: `items.attributes.<family>`.
pub const ATTRIBUTE_PREFIX: &str = "items.attributes.";

/// Shape of the uint8 matrix of an attribute with `width` values over `num_items` items: one
/// row per item plus the padding row 0.
pub fn attribute_shape(num_items: usize, width: usize) -> [usize; 2] {
    [num_items + 1, width]
}

/// Name → shape of every float tensor `dpr.json` implies (`intent`: its `intent` section).
pub fn expected_float_shapes(
    backbone: &BackboneConfig,
    d: usize,
    n: usize,
    steer: &SteerConfig,
    intent: Option<&IntentConfig>,
) -> BTreeMap<String, Vec<usize>> {
    let mut s: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    s.insert("items.embedding".into(), vec![n + 1, d]);
    match *backbone {
        BackboneConfig::Sasrec {
            max_len,
            num_blocks,
            ffn_dim,
            ..
        } => {
            s.insert(
                "backbone.position_embedding.weight".into(),
                vec![max_len, d],
            );
            for b in 0..num_blocks {
                let p = format!("backbone.blocks.{b}.");
                for norm in ["attention_norm", "ffn_norm"] {
                    s.insert(format!("{p}{norm}.weight"), vec![d]);
                    s.insert(format!("{p}{norm}.bias"), vec![d]);
                }
                for proj in ["query", "key", "value", "out"] {
                    s.insert(format!("{p}attention.{proj}.weight"), vec![d, d]);
                    s.insert(format!("{p}attention.{proj}.bias"), vec![d]);
                }
                s.insert(format!("{p}ffn_in.weight"), vec![ffn_dim, d]);
                s.insert(format!("{p}ffn_in.bias"), vec![ffn_dim]);
                s.insert(format!("{p}ffn_out.weight"), vec![d, ffn_dim]);
                s.insert(format!("{p}ffn_out.bias"), vec![d]);
            }
            s.insert("backbone.final_norm.weight".into(), vec![d]);
            s.insert("backbone.final_norm.bias".into(), vec![d]);
        }
        BackboneConfig::Gru4rec { num_layers, .. } => {
            for l in 0..num_layers {
                for k in ["ih", "hh"] {
                    s.insert(format!("backbone.gru.weight_{k}_l{l}"), vec![3 * d, d]);
                    s.insert(format!("backbone.gru.bias_{k}_l{l}"), vec![3 * d]);
                }
            }
        }
    }
    let (e, a) = (steer.prompt_dim, steer.attribute_dim);
    let k = steer.positive_experts + steer.negative_experts;
    let (ph, rh, eh) = (
        steer.projector_hidden,
        steer.router_hidden,
        steer.expert_hidden,
    );
    for (name, shape) in [
        ("steer.projector.hidden_layer.weight", vec![ph, e]),
        ("steer.projector.hidden_layer.bias", vec![ph]),
        ("steer.projector.output_layer.weight", vec![d, ph]),
        ("steer.projector.output_layer.bias", vec![d]),
        ("steer.router.hidden_layer.weight", vec![rh, e + d]),
        ("steer.router.hidden_layer.bias", vec![rh]),
        ("steer.router.output_layer.weight", vec![k, rh]),
        ("steer.router.output_layer.bias", vec![k]),
        ("steer.experts.in_weight", vec![k, eh, 3 * d]),
        ("steer.experts.in_bias", vec![k, eh]),
        ("steer.experts.out_weight", vec![k, d + a, eh]),
        ("steer.experts.out_bias", vec![k, d + a]),
    ] {
        s.insert(name.into(), shape);
    }
    if let Some(intent) = intent {
        let (e, h, v) = (intent.embedding_dim, intent.hidden, intent.num_values());
        for (name, shape) in [
            ("intent.hidden_layer.weight", vec![h, e]),
            ("intent.hidden_layer.bias", vec![h]),
            ("intent.output_layer.weight", vec![3 * v, h]),
            ("intent.output_layer.bias", vec![3 * v]),
        ] {
            s.insert(name.into(), shape);
        }
    }
    s
}

fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

pub(super) fn read_weights(root: &Path, raw: &RawConfig) -> Result<Weights, BundleError> {
    let path = root.join(WEIGHTS_FILE);
    let file = File::open(&path).map_err(|e| BundleError::Missing {
        file: path.clone(),
        why: e.to_string(),
    })?;
    // SAFETY: the file is only read; a bundle must not be rewritten in place while loaded
    // (the exporter replaces whole directories, never files).
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| BundleError::unreadable(WEIGHTS_FILE, format!("cannot map: {e}")))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| {
        BundleError::unreadable(WEIGHTS_FILE, format!("not a valid safetensors file ({e})"))
    })?;
    let mut expected = expected_float_shapes(
        &raw.backbone,
        raw.dim,
        raw.num_items,
        &raw.steer,
        raw.intent.as_ref(),
    );
    let mut floats = HashMap::new();
    let mut attributes = HashMap::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    for name in &names {
        let view = st
            .tensor(name)
            .map_err(|e| BundleError::tensor(name, format!("tensor '{name}': {e}")))?;
        let shape = view.shape().to_vec();
        if let Some(want) = expected.remove(name) {
            if view.dtype() != Dtype::F32 {
                return Err(BundleError::tensor(
                    name,
                    format!("tensor '{name}' has dtype {:?}, expected F32", view.dtype()),
                ));
            }
            if shape != want {
                return Err(BundleError::tensor(
                    name,
                    format!(
                        "tensor '{name}' has shape {}, {CONFIG_FILE} implies {}",
                        shape_str(&shape),
                        shape_str(&want)
                    ),
                ));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(BundleError::tensor(
                    name,
                    format!("tensor '{name}' holds NaN or Inf (flat index {i})"),
                ));
            }
            floats.insert(name.clone(), Tensor { shape, data });
        } else if let Some(attr) = name.strip_prefix(ATTRIBUTE_PREFIX) {
            // Which attributes exist, and their widths, are checked against the items file
            // once both are read (`check_attributes`).
            if view.dtype() != Dtype::U8 {
                return Err(BundleError::tensor(
                    name,
                    format!("tensor '{name}' has dtype {:?}, expected U8", view.dtype()),
                ));
            }
            attributes.insert(attr.to_owned(), (shape, view.data().to_vec()));
        } else if name.starts_with("intent.") && raw.intent.is_none() {
            return Err(BundleError::tensor(
                name,
                format!("unexpected tensor '{name}' ({CONFIG_FILE} has no intent section)"),
            ));
        } else {
            return Err(BundleError::tensor(
                name,
                format!("unexpected tensor '{name}'"),
            ));
        }
    }
    if let Some(name) = expected.keys().next() {
        return Err(BundleError::tensor(
            name,
            format!("missing tensor '{name}'"),
        ));
    }
    let embedding = &floats["items.embedding"].data;
    if embedding[..raw.dim].iter().any(|&x| x != 0.0) {
        return Err(BundleError::tensor(
            "items.embedding",
            "tensor 'items.embedding' row 0 (padding) is not zero",
        ));
    }
    Ok(Weights { floats, attributes })
}

/// Every attribute of the items file has its uint8 matrix in the weights, of the implied
/// shape and saying the same, and the weights hold no other.
pub(super) fn check_attributes(
    raw: &RawConfig,
    items: &Items,
    weights: &Weights,
) -> Result<(), BundleError> {
    let items_file = &raw.items.file;
    for (attr, a) in &items.attributes {
        let name = format!("{ATTRIBUTE_PREFIX}{attr}");
        let (shape, matrix) = weights.attributes.get(attr).ok_or_else(|| {
            BundleError::tensor(
                &name,
                format!("missing tensor '{name}' ({items_file} lists it)"),
            )
        })?;
        let want = attribute_shape(raw.num_items, a.values.len());
        if shape[..] != want {
            return Err(BundleError::tensor(
                &name,
                format!(
                    "tensor '{name}' has shape {}, {items_file} implies {}",
                    shape_str(shape),
                    shape_str(&want)
                ),
            ));
        }
        check_attribute_matrix(attr, a, matrix, items_file)?;
    }
    if let Some(attr) = weights
        .attributes
        .keys()
        .find(|attr| !items.attributes.contains_key(*attr))
    {
        return Err(BundleError::tensor(
            &format!("{ATTRIBUTE_PREFIX}{attr}"),
            format!("unexpected tensor 'items.attributes.{attr}'"),
        ));
    }
    Ok(())
}

/// The uint8 matrix must say exactly what `items.json` says, row by row.
fn check_attribute_matrix(
    attr: &str,
    a: &RawAttribute,
    matrix: &[u8],
    items_file: &str,
) -> Result<(), BundleError> {
    let w = a.values.len();
    let mut want = vec![0u8; w];
    if matrix[..w].iter().any(|&x| x != 0) {
        return Err(BundleError::tensor(
            &format!("{ATTRIBUTE_PREFIX}{attr}"),
            format!("tensor 'items.attributes.{attr}' row 0 (padding) is not zero"),
        ));
    }
    for (i, values) in a.items.iter().enumerate() {
        want.iter_mut().for_each(|x| *x = 0);
        for &v in values {
            want[v] = 1;
        }
        let row = i + 1;
        if matrix[row * w..(row + 1) * w] != want[..] {
            return Err(BundleError::tensor(
                &format!("{ATTRIBUTE_PREFIX}{attr}"),
                format!(
                    "tensor 'items.attributes.{attr}' row {row} disagrees with {items_file} attributes.{attr}.items[{i}]"
                ),
            ));
        }
    }
    Ok(())
}
