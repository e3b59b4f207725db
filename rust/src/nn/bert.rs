// Over 400 lines because it is one forward pass: config, weights, layers, attention, GELU, tests.
//! The BERT encoder of the prompt encoder (MiniLM and its kin), hand-written for one thread:
//! token ids of a few sentences → the mean of each sentence's last hidden states.
//!
//! It computes what `transformers`' `BertModel` computes in eval mode for unpadded
//! sentences (absolute positions, token type 0, exact-erf GELU, post-layer-norm), in float32:
//! the linear layers through [`PackedLinear`] (weights packed at load, SIMD chosen at run
//! time), attention per sentence, head by head. Sentences are laid end to end, so a batch
//! needs no padding and each sentence's numbers do not depend on its companions. Working
//! memory is one [`Scratch`] per thread, reused across calls.

use std::cell::RefCell;

use serde::Deserialize;

use crate::nn::linalg::layer_norm;
use crate::nn::packed::{Isa, PackedLinear};
use crate::nn::tensors::{Stored, TensorReader};

/// Defines `$name(args)`, which runs the `#[inline(always)]` function `$body(args)` compiled
/// for the widest vectors the CPU has ([`Isa::detect`]), so that its loops vectorise. The
/// code has no fused multiply-adds to form, so every variant computes the same numbers.
macro_rules! simd_dispatch {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn narrow($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match Isa::detect() {
                    // SAFETY: `Isa::detect` saw AVX-512F on this CPU.
                    Isa::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: `Isa::detect` saw AVX2 on this CPU.
                    Isa::Avx2 => return unsafe { narrow($($arg),*) },
                    Isa::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// The fields of a Hugging Face `config.json` the forward pass reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "one")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn one() -> usize {
    1
}

fn default_eps() -> f64 {
    1e-12
}

fn gelu() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Why this configuration cannot run here, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Some(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.intermediate_size == 0 || self.type_vocab_size == 0 || self.vocab_size == 0 {
            return Some(
                "intermediate_size, vocab_size and type_vocab_size must be positive".into(),
            );
        }
        if self.hidden_act != "gelu" {
            return Some(format!(
                "hidden_act {:?} is not supported (only \"gelu\", the exact-erf GELU)",
                self.hidden_act
            ));
        }
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => None,
            Some(other) => Some(format!(
                "position_embedding_type {other:?} is not supported (only \"absolute\")"
            )),
        }
    }
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one product: `3H` outputs.
    qkv: PackedLinear,
    attn_out: PackedLinear,
    attn_norm: Norm,
    ffn_in: PackedLinear,
    ffn_out: PackedLinear,
    ffn_norm: Norm,
}

/// A loaded BERT encoder (see the module docs).
pub struct Bert {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    max_positions: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's embedding (every prompt is one segment).
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

fn linear(
    r: &TensorReader,
    name: &str,
    (out_dim, in_dim): (usize, usize),
    isa: Isa,
) -> Result<PackedLinear, String> {
    let w = r.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
    let b = r.get_f32(&format!("{name}.bias"), &[out_dim])?;
    Ok(PackedLinear::for_isa(w.weights(), &b, out_dim, in_dim, isa).expect("shapes checked"))
}

fn norm(r: &TensorReader, name: &str, dim: usize) -> Result<Norm, String> {
    Ok(Norm {
        weight: r.get_f32(&format!("{name}.weight"), &[dim])?,
        bias: r.get_f32(&format!("{name}.bias"), &[dim])?,
    })
}

impl Bert {
    /// Builds the encoder of `config` from the tensors of `reader`; an error names the tensor.
    pub fn load(reader: &TensorReader, config: &BertConfig) -> Result<Self, String> {
        Self::load_for(reader, config, Isa::detect())
    }

    /// As [`Bert::load`], with the linear layers packed for `isa`'s kernels (which the CPU must
    /// have: tests compare the kernels through this).
    pub(crate) fn load_for(
        reader: &TensorReader,
        config: &BertConfig,
        isa: Isa,
    ) -> Result<Self, String> {
        if let Some(problem) = config.unsupported() {
            return Err(problem);
        }
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let e = "embeddings";
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let parts = ["query", "key", "value"]
                .iter()
                .map(|n| reader.get(&format!("{p}.attention.self.{n}.weight"), &[h, h]))
                .collect::<Result<Vec<_>, _>>()?;
            let mut bias = Vec::with_capacity(3 * h);
            for n in ["query", "key", "value"] {
                bias.extend(reader.get_f32(&format!("{p}.attention.self.{n}.bias"), &[h])?);
            }
            let qkv = PackedLinear::for_isa(Stored::concat(parts).weights(), &bias, 3 * h, h, isa)
                .expect("shapes checked");
            layers.push(Layer {
                qkv,
                attn_out: linear(reader, &format!("{p}.attention.output.dense"), (h, h), isa)?,
                attn_norm: norm(reader, &format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: linear(reader, &format!("{p}.intermediate.dense"), (f, h), isa)?,
                ffn_out: linear(reader, &format!("{p}.output.dense"), (h, f), isa)?,
                ffn_norm: norm(reader, &format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let token_types = reader.get_f32(
            &format!("{e}.token_type_embeddings.weight"),
            &[config.type_vocab_size, h],
        )?;
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            intermediate: f,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            word: reader.get_f32(
                &format!("{e}.word_embeddings.weight"),
                &[config.vocab_size, h],
            )?,
            position: reader.get_f32(
                &format!("{e}.position_embeddings.weight"),
                &[config.max_position_embeddings, h],
            )?,
            token_type: token_types[..h].to_vec(),
            embed_norm: norm(reader, &format!("{e}.LayerNorm"), h)?,
            layers,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The mean of each sentence's last hidden states, `sentences.len() × hidden` floats
    /// written to `pooled`. Sentences must be non-empty, at most `max_position_embeddings`
    /// tokens long, with ids below the vocabulary size (an error otherwise, never a panic).
    pub fn mean_pooled(&self, sentences: &[&[u32]], pooled: &mut [f32]) -> Result<(), String> {
        let h = self.hidden;
        assert_eq!(pooled.len(), sentences.len() * h, "pooled: wrong length");
        let vocab = self.word.len() / h;
        for s in sentences {
            if s.is_empty() || s.len() > self.max_positions {
                return Err(format!(
                    "a sentence of {} tokens (1 to {} run)",
                    s.len(),
                    self.max_positions
                ));
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= vocab) {
                return Err(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                ));
            }
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.run(sentences, &mut scratch, pooled),
            // Unreachable (nothing here re-enters), but a fresh scratch is always correct.
            Err(_) => self.run(sentences, &mut Scratch::default(), pooled),
        });
        Ok(())
    }

    fn run(&self, sentences: &[&[u32]], s: &mut Scratch, pooled: &mut [f32]) {
        let (h, f) = (self.hidden, self.intermediate);
        let rows: usize = sentences.iter().map(|t| t.len()).sum();
        let longest = sentences.iter().map(|t| t.len()).max().unwrap_or(0);
        s.x.resize(rows * h, 0.0);
        s.qkv.resize(rows * 3 * h, 0.0);
        s.ctx.resize(rows * h, 0.0);
        s.tmp.resize(rows * h, 0.0);
        s.ffn.resize(rows * f, 0.0);
        s.keys.resize((h / self.heads) * longest, 0.0);
        s.scores.resize(longest, 0.0);

        let mut row = 0;
        for tokens in sentences {
            for (p, &id) in tokens.iter().enumerate() {
                let x = &mut s.x[row * h..(row + 1) * h];
                let word = &self.word[id as usize * h..][..h];
                let position = &self.position[p * h..][..h];
                for (((x, w), t), p) in x.iter_mut().zip(word).zip(&self.token_type).zip(position) {
                    *x = (w + t) + p;
                }
                row += 1;
            }
        }
        let n = &self.embed_norm;
        layer_norm(&mut s.x, h, &n.weight, &n.bias, self.eps);

        for layer in &self.layers {
            layer.qkv.apply(&s.x, rows, &mut s.qkv);
            self.attention(sentences, s);
            layer.attn_out.apply(&s.ctx, rows, &mut s.tmp);
            add_and_norm(&mut s.x, &s.tmp, &layer.attn_norm, h, self.eps);
            layer.ffn_in.apply(&s.x, rows, &mut s.ffn);
            gelu_in_place(&mut s.ffn);
            layer.ffn_out.apply(&s.ffn, rows, &mut s.tmp);
            add_and_norm(&mut s.x, &s.tmp, &layer.ffn_norm, h, self.eps);
        }

        let mut start = 0;
        for (tokens, out) in sentences.iter().zip(pooled.chunks_exact_mut(h)) {
            out.fill(0.0);
            for state in s.x[start * h..].chunks_exact(h).take(tokens.len()) {
                out.iter_mut().zip(state).for_each(|(o, x)| *o += x);
            }
            let count = tokens.len() as f32;
            out.iter_mut().for_each(|o| *o /= count);
            start += tokens.len();
        }
    }

    fn attention(&self, sentences: &[&[u32]], s: &mut Scratch) {
        attention(self.hidden, self.heads, sentences, s);
    }
}

simd_dispatch!(attention, attention_body, (h: usize, heads: usize, sentences: &[&[u32]], s: &mut Scratch));
simd_dispatch!(gelu_in_place, gelu_body, (x: &mut [f32]));

/// `ctx = softmax(q kᵀ / √d) v` per sentence and head, from `qkv` (rows of `[q, k, v]`).
#[inline(always)]
fn attention_body(h: usize, heads: usize, sentences: &[&[u32]], s: &mut Scratch) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut start = 0;
    for tokens in sentences {
        let t = tokens.len();
        let qkv = &s.qkv[start * 3 * h..(start + t) * 3 * h];
        for head in 0..heads {
            // Keys of this head transposed (d × t): a query's scores are then `d` row updates.
            let keys = &mut s.keys[..d * t];
            for j in 0..t {
                for (c, &k) in qkv[j * 3 * h + h + head * d..][..d].iter().enumerate() {
                    keys[c * t + j] = k;
                }
            }
            for i in 0..t {
                let q = &qkv[i * 3 * h + head * d..][..d];
                let scores = &mut s.scores[..t];
                scores.fill(0.0);
                for (c, &qc) in q.iter().enumerate() {
                    for (sc, k) in scores.iter_mut().zip(&keys[c * t..(c + 1) * t]) {
                        *sc += qc * k;
                    }
                }
                softmax_scaled(scores, scale);
                let ctx = &mut s.ctx[(start + i) * h + head * d..][..d];
                ctx.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let v = &qkv[j * 3 * h + 2 * h + head * d..][..d];
                    for (o, v) in ctx.iter_mut().zip(v) {
                        *o += p * v;
                    }
                }
            }
        }
        start += t;
    }
}

/// Per-thread working memory of the forward pass, grown to the largest call seen (bounded
/// by the callers' batch limits).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    ffn: Vec<f32>,
    keys: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `x = LayerNorm(x + residual)`, row by row.
fn add_and_norm(x: &mut [f32], residual: &[f32], norm: &Norm, dim: usize, eps: f32) {
    x.iter_mut().zip(residual).for_each(|(x, r)| *x += r);
    layer_norm(x, dim, &norm.weight, &norm.bias, eps);
}

/// Softmax of `x · scale` in place, shifted by the maximum.
fn softmax_scaled(x: &mut [f32], scale: f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp(*v * scale - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `eˣ` to about 1 ulp (Cephes' `expf` polynomial), branch-free so that loops over it
/// vectorise; NaN stays NaN, and the input is clamped to where the result is a normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    e * f32::from_bits(bits.wrapping_add(127) << 23)
}

/// GELU with the exact normal CDF, `x Φ(x)`, Φ through `erfc` (Numerical Recipes' Chebyshev
/// fit, relative error below 1.2e-7) over the branch-free [`exp`].
#[inline(always)]
fn gelu_exact(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let half_erfc = 0.5 * t * exp(-z * z + poly);
    let phi = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    x * phi
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_exact(*v));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The normal CDF Φ(x) in float64: erf's Taylor series where it is stable (|x| / √2 ≤ 3),
    /// erfc's asymptotic series beyond (error below 1e-8 there).
    fn phi64(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let erfc = if z <= 3.0 {
            let (mut sum, mut term) = (0.0, z);
            for n in 0..100 {
                sum += term / (2 * n + 1) as f64;
                term *= -z * z / (n + 1) as f64;
            }
            1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let u = 1.0 / (2.0 * z * z);
            let series = 1.0 - u + 3.0 * u * u - 15.0 * u.powi(3) + 105.0 * u.powi(4);
            (-z * z).exp() / (z * std::f64::consts::PI.sqrt()) * series
        };
        if x >= 0.0 {
            1.0 - 0.5 * erfc
        } else {
            0.5 * erfc
        }
    }

    #[test]
    fn bert_exp_is_accurate_and_safe() {
        for i in -1990..=2010 {
            let x = i as f32 * 0.0437;
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-87.0) > 0.0 && exp(88.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn bert_gelu_is_the_exact_erf_gelu() {
        for i in -1200..=1200 {
            let x = i as f32 * 0.01;
            let x64 = f64::from(x);
            let want = x64 * phi64(x64);
            let got = f64::from(gelu_exact(x));
            assert!(
                (got - want).abs() < 1e-6 * (1.0 + want.abs()),
                "gelu({x}) = {got}, want {want}"
            );
        }
        assert_eq!(gelu_exact(f32::INFINITY), f32::INFINITY);
        assert!(gelu_exact(-100.0).abs() < 1e-30);
        let mut v: Vec<f32> = (-500..500).map(|i| i as f32 * 0.013).collect();
        let want: Vec<f32> = v.iter().map(|&x| gelu_exact(x)).collect();
        gelu_in_place(&mut v);
        assert_eq!(v, want, "the SIMD loop computes the scalar function");
    }

    #[test]
    fn bert_softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -50.0];
        softmax_scaled(&mut x, 0.5);
        let sum: f32 = x.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        let e: Vec<f64> = [0.5f64, 1.0, 1.5, -25.0].iter().map(|v| v.exp()).collect();
        let total: f64 = e.iter().sum();
        for (g, w) in x.iter().zip(&e) {
            assert!((f64::from(*g) - w / total).abs() < 1e-7);
        }
    }
}
