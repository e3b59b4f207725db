//! Float tensors of a safetensors file, read by name with their shapes checked: what the
//! prompt encoder's BERT loads its weights through.

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::nn::packed::Weights;

/// A tensor's values as stored: float16 kept (the packed layers convert it exactly), every
/// other float type widened or narrowed to float32.
pub(crate) enum Stored {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Stored {
    pub(crate) fn into_f32(self) -> Vec<f32> {
        match self {
            Stored::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Stored::F32(v) => v,
        }
    }

    pub(crate) fn weights(&self) -> Weights<'_> {
        match self {
            Stored::F16(v) => Weights::F16(v),
            Stored::F32(v) => Weights::F32(v),
        }
    }

    pub(crate) fn concat(parts: Vec<Stored>) -> Stored {
        if parts.iter().all(|p| matches!(p, Stored::F16(_))) {
            let mut all = Vec::new();
            for p in parts {
                if let Stored::F16(v) = p {
                    all.extend(v);
                }
            }
            Stored::F16(all)
        } else {
            Stored::F32(parts.into_iter().flat_map(Stored::into_f32).collect())
        }
    }
}

/// Reads float tensors of a safetensors file by name, checking shapes.
pub struct TensorReader<'a> {
    file: SafeTensors<'a>,
    prefix: &'static str,
}

fn floats<T: Copy>(data: &[u8], size: usize, convert: impl Fn(&[u8]) -> T) -> Vec<T> {
    data.chunks_exact(size).map(convert).collect()
}

impl<'a> TensorReader<'a> {
    /// Parses `bytes`; names are looked up under `prefix` when the file has one of the two
    /// spellings (`embeddings.…` of sentence-transformers, `bert.embeddings.…` of BertForX).
    pub fn new(bytes: &'a [u8]) -> Result<Self, String> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let prefix = ["", "bert."]
            .into_iter()
            .find(|p| file.tensor(&format!("{p}embeddings.word_embeddings.weight")).is_ok())
            .ok_or(
                "no tensor 'embeddings.word_embeddings.weight' (nor 'bert.embeddings.…'): not a BERT model",
            )?;
        Ok(Self { file, prefix })
    }

    /// Rejects NaN/Inf in any floating tensor of the file (a bad float16 conversion would
    /// otherwise make every prompt vector NaN, silently).
    pub fn check_finite(&self) -> Result<(), String> {
        for (name, view) in self.file.tensors() {
            let finite = match view.dtype() {
                Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 => {
                    decode(view.dtype(), view.data())
                        .map(Stored::into_f32)
                        .is_some_and(|v| v.iter().all(|x| x.is_finite()))
                }
                _ => true,
            };
            if !finite {
                return Err(format!("tensor '{name}' holds NaN or Inf"));
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Stored, String> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .file
            .tensor(&full)
            .map_err(|_| format!("bad weights: no tensor '{full}'"))?;
        if view.shape() != shape {
            return Err(format!(
                "bad weights: tensor '{full}' has shape {:?}, expected {shape:?}",
                view.shape()
            ));
        }
        decode(view.dtype(), view.data()).ok_or_else(|| {
            format!(
                "bad weights: tensor '{full}' is {:?}, not a float type",
                view.dtype()
            )
        })
    }

    pub(crate) fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        self.get(name, shape).map(Stored::into_f32)
    }
}

fn decode(dtype: Dtype, data: &[u8]) -> Option<Stored> {
    Some(match dtype {
        Dtype::F16 => Stored::F16(floats(data, 2, |b| f16::from_le_bytes([b[0], b[1]]))),
        Dtype::BF16 => Stored::F32(floats(data, 2, |b| {
            bf16::from_le_bytes([b[0], b[1]]).to_f32()
        })),
        Dtype::F32 => Stored::F32(floats(data, 4, |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })),
        Dtype::F64 => Stored::F32(floats(data, 8, |b| {
            f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
        })),
        _ => return None,
    })
}
