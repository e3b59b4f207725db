// Over 400 lines because the typed weights, the one table that builds them and the reader share it.
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

pub(super) struct ReadWeights {
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

/// A `nn.Linear` layer's tensors: `weight` (`out_dim × in_dim`, row-major) and `bias`.
#[derive(Debug, Clone)]
pub struct LinearWeights<T> {
    pub weight: T,
    pub bias: T,
    pub out_dim: usize,
    pub in_dim: usize,
}

/// A LayerNorm's scale and shift.
#[derive(Debug, Clone)]
pub struct NormWeights<T> {
    pub weight: T,
    pub bias: T,
}

/// One pre-norm SASRec block.
#[derive(Debug, Clone)]
pub struct SasRecBlockWeights<T> {
    pub attention_norm: NormWeights<T>,
    pub query: LinearWeights<T>,
    pub key: LinearWeights<T>,
    pub value: LinearWeights<T>,
    pub out: LinearWeights<T>,
    pub ffn_norm: NormWeights<T>,
    pub ffn_in: LinearWeights<T>,
    pub ffn_out: LinearWeights<T>,
}

/// One GRU layer: input and recurrent projections, gates stacked `r, z, n` (PyTorch order).
#[derive(Debug, Clone)]
pub struct GruLayerWeights<T> {
    pub input: LinearWeights<T>,
    pub recurrent: LinearWeights<T>,
}

#[derive(Debug, Clone)]
pub enum BackboneWeights<T> {
    SasRec {
        /// `max_len × d`.
        position: T,
        blocks: Vec<SasRecBlockWeights<T>>,
        final_norm: NormWeights<T>,
    },
    Gru4Rec {
        layers: Vec<GruLayerWeights<T>>,
    },
}

/// The steering head. The experts are stored stacked, `K` at a time.
#[derive(Debug, Clone)]
pub struct SteerWeights<T> {
    pub projector_hidden: LinearWeights<T>,
    pub projector_output: LinearWeights<T>,
    pub router_hidden: LinearWeights<T>,
    pub router_output: LinearWeights<T>,
    /// `K × H × 3d`.
    pub experts_in_weight: T,
    /// `K × H`.
    pub experts_in_bias: T,
    /// `K × (d + A) × H`.
    pub experts_out_weight: T,
    /// `K × (d + A)`.
    pub experts_out_bias: T,
}

/// The intent read-out's two layers.
#[derive(Debug, Clone)]
pub struct IntentWeights<T> {
    pub hidden: LinearWeights<T>,
    pub output: LinearWeights<T>,
}

/// Every float tensor of a bundle, typed. `T` is the tensor (`Vec<f32>` when read, `()` when
/// only the name/shape table is wanted).
#[derive(Debug, Clone)]
pub struct Weights<T> {
    /// `(N+1) × d`, row 0 the zero padding row.
    pub item_embedding: T,
    pub backbone: BackboneWeights<T>,
    pub steer: SteerWeights<T>,
    pub intent: Option<IntentWeights<T>>,
}

fn linear<T, E>(
    tensor: &mut impl FnMut(&str, Vec<usize>) -> Result<T, E>,
    name: &str,
    out_dim: usize,
    in_dim: usize,
) -> Result<LinearWeights<T>, E> {
    Ok(LinearWeights {
        weight: tensor(&format!("{name}.weight"), vec![out_dim, in_dim])?,
        bias: tensor(&format!("{name}.bias"), vec![out_dim])?,
        out_dim,
        in_dim,
    })
}

fn norm<T, E>(
    tensor: &mut impl FnMut(&str, Vec<usize>) -> Result<T, E>,
    name: &str,
    d: usize,
) -> Result<NormWeights<T>, E> {
    Ok(NormWeights {
        weight: tensor(&format!("{name}.weight"), vec![d])?,
        bias: tensor(&format!("{name}.bias"), vec![d])?,
    })
}

impl<T> Weights<T> {
    /// The one tensor name/shape table: asks `tensor(name, shape)` for every float tensor
    /// `dpr.json` implies (`intent`: its `intent` section) and assembles the answers.
    pub fn walk<E>(
        backbone: &BackboneConfig,
        d: usize,
        n: usize,
        steer: &SteerConfig,
        intent: Option<&IntentConfig>,
        tensor: &mut impl FnMut(&str, Vec<usize>) -> Result<T, E>,
    ) -> Result<Self, E> {
        let item_embedding = tensor("items.embedding", vec![n + 1, d])?;
        let backbone = match *backbone {
            BackboneConfig::Sasrec {
                max_len,
                num_blocks,
                ffn_dim,
                ..
            } => {
                let position = tensor("backbone.position_embedding.weight", vec![max_len, d])?;
                let blocks = (0..num_blocks)
                    .map(|b| {
                        let p = format!("backbone.blocks.{b}.");
                        Ok(SasRecBlockWeights {
                            attention_norm: norm(tensor, &format!("{p}attention_norm"), d)?,
                            query: linear(tensor, &format!("{p}attention.query"), d, d)?,
                            key: linear(tensor, &format!("{p}attention.key"), d, d)?,
                            value: linear(tensor, &format!("{p}attention.value"), d, d)?,
                            out: linear(tensor, &format!("{p}attention.out"), d, d)?,
                            ffn_norm: norm(tensor, &format!("{p}ffn_norm"), d)?,
                            ffn_in: linear(tensor, &format!("{p}ffn_in"), ffn_dim, d)?,
                            ffn_out: linear(tensor, &format!("{p}ffn_out"), d, ffn_dim)?,
                        })
                    })
                    .collect::<Result<Vec<_>, E>>()?;
                BackboneWeights::SasRec {
                    position,
                    blocks,
                    final_norm: norm(tensor, "backbone.final_norm", d)?,
                }
            }
            BackboneConfig::Gru4rec { num_layers, .. } => {
                // PyTorch's GRU names its tensors `weight_ih_l0` / `bias_ih_l0`, not
                // `<layer>.weight` / `<layer>.bias`.
                let mut part = |kind: &str, l: usize| -> Result<LinearWeights<T>, E> {
                    Ok(LinearWeights {
                        weight: tensor(
                            &format!("backbone.gru.weight_{kind}_l{l}"),
                            vec![3 * d, d],
                        )?,
                        bias: tensor(&format!("backbone.gru.bias_{kind}_l{l}"), vec![3 * d])?,
                        out_dim: 3 * d,
                        in_dim: d,
                    })
                };
                let layers = (0..num_layers)
                    .map(|l| {
                        Ok(GruLayerWeights {
                            input: part("ih", l)?,
                            recurrent: part("hh", l)?,
                        })
                    })
                    .collect::<Result<Vec<_>, E>>()?;
                BackboneWeights::Gru4Rec { layers }
            }
        };
        let (e, a) = (steer.prompt_dim, steer.attribute_dim);
        let k = steer.positive_experts + steer.negative_experts;
        let (ph, rh, eh) = (
            steer.projector_hidden,
            steer.router_hidden,
            steer.expert_hidden,
        );
        let steer = SteerWeights {
            projector_hidden: linear(tensor, "steer.projector.hidden_layer", ph, e)?,
            projector_output: linear(tensor, "steer.projector.output_layer", d, ph)?,
            router_hidden: linear(tensor, "steer.router.hidden_layer", rh, e + d)?,
            router_output: linear(tensor, "steer.router.output_layer", k, rh)?,
            experts_in_weight: tensor("steer.experts.in_weight", vec![k, eh, 3 * d])?,
            experts_in_bias: tensor("steer.experts.in_bias", vec![k, eh])?,
            experts_out_weight: tensor("steer.experts.out_weight", vec![k, d + a, eh])?,
            experts_out_bias: tensor("steer.experts.out_bias", vec![k, d + a])?,
        };
        let intent = intent
            .map(|intent| {
                let (e, h, v) = (intent.embedding_dim, intent.hidden, intent.num_values());
                Ok(IntentWeights {
                    hidden: linear(tensor, "intent.hidden_layer", h, e)?,
                    output: linear(tensor, "intent.output_layer", 3 * v, h)?,
                })
            })
            .transpose()?;
        Ok(Weights {
            item_embedding,
            backbone,
            steer,
            intent,
        })
    }
}

/// Name → shape of every float tensor `dpr.json` implies (`intent`: its `intent` section):
/// [`Weights::walk`]'s table.
pub fn expected_float_shapes(
    backbone: &BackboneConfig,
    d: usize,
    n: usize,
    steer: &SteerConfig,
    intent: Option<&IntentConfig>,
) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = BTreeMap::new();
    let walked = Weights::<()>::walk(backbone, d, n, steer, intent, &mut |name, shape| {
        shapes.insert(name.to_owned(), shape);
        Ok::<(), std::convert::Infallible>(())
    });
    match walked {
        Ok(_) => shapes,
        Err(never) => match never {},
    }
}

fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

pub(super) fn read_weights(root: &Path, raw: &RawConfig) -> Result<ReadWeights, BundleError> {
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
    Ok(ReadWeights { floats, attributes })
}

/// Every attribute of the items file has its uint8 matrix in the weights, of the implied
/// shape and saying the same, and the weights hold no other.
pub(super) fn check_attributes(
    raw: &RawConfig,
    items: &Items,
    weights: &ReadWeights,
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
