//! The steering head: prompt projector, fusion, router and experts, and the modulation
//! `h' = [h, 0_A] + strength · Σ_k g_k Δ_k` (formulas in `docs/bundle.md`).
//!
//! Most of the head's arithmetic depends on the prompt alone: the projector, the prompt's half
//! of the router's first layer, and the `p` third of every expert's first layer. Those parts are
//! computed once per distinct prompt ([`PreparedPrompt`], kept in a small LRU cache). The `h`
//! thirds depend on the history alone ([`Steering::history_terms`]; the engine keeps them with
//! the backbone's vector in its history cache), so a re-prompt on a known history only pays
//! for the `h ⊙ p` third and the experts' output layers:
//!
//! ```text
//! router:  relu(R_e e + b_r  +  R_h h)                 (R_e e + b_r per prompt, R_h h per history)
//! expert:  relu(W_p p + b_k  +  W_h h  +  W_hp (h ⊙ p))  (W_p p + b_k per prompt, W_h h per history)
//! ```

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::bundle::{BundleError, SteerConfig, SteerWeights};
use crate::nn::backbone::linear;
use crate::nn::linalg::{axpy, gemv, relu, softmax, Linear};

/// A dense `out × in` matrix without bias, applied to one vector at a time. Kept in PyTorch's
/// layout: a single row streams each output's weights contiguously ([`gemv`]), which
/// measured faster than the transposed layout [`gemm`] reads for these 1-row products.
#[derive(Debug)]
struct Dense {
    weight: Vec<f32>,
    cols: usize,
}

impl Dense {
    /// Columns `from..to` of a PyTorch-layout (`out × in`) weight.
    fn columns(weight: &[f32], in_dim: usize, from: usize, to: usize) -> Dense {
        let weight = weight
            .chunks_exact(in_dim)
            .flat_map(|row| &row[from..to])
            .copied()
            .collect();
        Dense {
            weight,
            cols: to - from,
        }
    }

    /// `out = W x`.
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        gemv(&self.weight, self.cols, x, out);
    }

    /// `out = W x + plus`.
    fn apply_plus(&self, x: &[f32], plus: &[f32], out: &mut [f32]) {
        gemv(&self.weight, self.cols, x, out);
        for (o, p) in out.iter_mut().zip(plus) {
            *o += p;
        }
    }
}

/// One expert's output layer: `Δ = W_out hidden + b_out`; its first layer
/// `relu(W_in [h, p, h ⊙ p] + b_in)` is split into prompt columns (prepared per prompt) and
/// the `[h, h ⊙ p]` columns, which [`Steering`] keeps for all experts in one matrix.
#[derive(Debug)]
struct Expert {
    output: Linear,
}

/// The steering weights.
pub struct Steering {
    dim: usize,
    attribute_dim: usize,
    prompt_dim: usize,
    projector_hidden: Linear,
    projector_output: Linear,
    router_prompt: Dense,
    router_bias: Vec<f32>,
    router_state: Dense,
    router_output: Linear,
    /// The `p` columns of every expert's first layer, stacked (`K·H` outputs).
    experts_prompt: Dense,
    /// `b_in` of every expert, stacked.
    experts_bias: Vec<f32>,
    /// The `h` columns of every expert's first layer, stacked (`K·H` outputs).
    experts_history: Dense,
    /// The `h ⊙ p` columns of every expert's first layer, stacked (`K·H` outputs).
    experts_product: Dense,
    experts: Vec<Expert>,
    prepared: Option<Mutex<LruCache<u64, Arc<PreparedPrompt>>>>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("dim", &self.dim)
            .field("attribute_dim", &self.attribute_dim)
            .field("prompt_dim", &self.prompt_dim)
            .field("experts", &self.experts.len())
            .finish_non_exhaustive()
    }
}

/// The prompt-only part of the steering for one prompt embedding.
#[derive(Debug)]
pub struct PreparedPrompt {
    embedding: Vec<f32>,
    /// A zero embedding (the empty prompt): no steering at all.
    is_zero: bool,
    /// `p`, the prompt in the collaborative space (`d`).
    projected: Vec<f32>,
    /// `R_e e + b_r` (router hidden width).
    router: Vec<f32>,
    /// `W_p p + b_in` of every expert, stacked (`K·H`).
    experts: Vec<f32>,
}

fn invalid(tensor: &str, message: String) -> BundleError {
    BundleError::Tensor {
        tensor: tensor.to_owned(),
        message,
    }
}

impl Steering {
    /// Reads the head; up to `cache_capacity` prepared prompts are kept (0: none).
    /// `d`: the backbone width; `s`: `dpr.json` `steer`.
    pub fn new(
        d: usize,
        s: &SteerConfig,
        w: SteerWeights<Vec<f32>>,
        cache_capacity: usize,
    ) -> Result<Steering, BundleError> {
        let k = s.positive_experts + s.negative_experts;
        let (e, a, h) = (s.prompt_dim, s.attribute_dim, s.expert_hidden);
        let projector_hidden = linear(w.projector_hidden, "steer.projector.hidden_layer")?;
        let projector_output = linear(w.projector_output, "steer.projector.output_layer")?;
        let router_hidden = linear(w.router_hidden, "steer.router.hidden_layer")?;
        let router_output = linear(w.router_output, "steer.router.output_layer")?;
        let in_weight = w.experts_in_weight;
        let in_bias = w.experts_in_bias;
        let out_weight = w.experts_out_weight;
        let out_bias = w.experts_out_bias;
        if in_weight.len() != k * h * 3 * d
            || in_bias.len() != k * h
            || out_weight.len() != k * (d + a) * h
            || out_bias.len() != k * (d + a)
        {
            return Err(invalid(
                "steer.experts",
                format!("steer.experts: expected {k} experts"),
            ));
        }
        let experts = (0..k)
            .map(|i| {
                let output = Linear::new(
                    out_weight[i * (d + a) * h..(i + 1) * (d + a) * h].to_vec(),
                    out_bias[i * (d + a)..(i + 1) * (d + a)].to_vec(),
                    d + a,
                    h,
                )
                .ok_or_else(|| {
                    invalid(
                        "steer.experts.out_weight",
                        "steer.experts.out_weight has the wrong size".into(),
                    )
                })?;
                Ok(Expert { output })
            })
            .collect::<Result<Vec<_>, BundleError>>()?;
        let router_width = e + d;
        Ok(Steering {
            dim: d,
            attribute_dim: a,
            prompt_dim: e,
            projector_hidden,
            projector_output,
            router_prompt: Dense::columns(&router_hidden.weight, router_width, 0, e),
            router_state: Dense::columns(&router_hidden.weight, router_width, e, router_width),
            router_bias: router_hidden.bias,
            router_output,
            experts_prompt: Dense::columns(&in_weight, 3 * d, d, 2 * d),
            experts_bias: in_bias,
            // Columns of each W_in: [h | p | h ⊙ p].
            experts_history: Dense::columns(&in_weight, 3 * d, 0, d),
            experts_product: Dense::columns(&in_weight, 3 * d, 2 * d, 3 * d),
            experts,
            prepared: NonZeroUsize::new(cache_capacity).map(|c| Mutex::new(LruCache::new(c))),
        })
    }

    /// Width of a steered vector: `d + A`.
    pub fn output_dim(&self) -> usize {
        self.dim + self.attribute_dim
    }

    pub fn prompt_dim(&self) -> usize {
        self.prompt_dim
    }

    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// Floats of [`Steering::history_terms`]: `K·H` expert terms, then the router's.
    pub fn history_terms_len(&self) -> usize {
        self.experts_bias.len() + self.router_bias.len()
    }

    /// The parts of the head that read the backbone's vector `h` alone, `[W_h h, R_h h]`
    /// ([`Steering::history_terms_len`] floats), for [`Steering::steer`].
    pub fn history_terms(&self, h: &[f32], terms: &mut [f32]) {
        let (experts, router) = terms.split_at_mut(self.experts_bias.len());
        self.experts_history.apply(h, experts);
        self.router_state.apply(h, router);
    }

    /// The prompt-only part of the steering for `prompt` (`prompt_dim` floats), from the cache
    /// when this embedding was seen recently.
    pub fn prepare(&self, prompt: &[f32]) -> Arc<PreparedPrompt> {
        let Some(cache) = &self.prepared else {
            return Arc::new(self.compute(prompt));
        };
        let key = embedding_key(prompt);
        let cached = {
            let mut cache = cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache.get(&key).cloned()
        };
        // The key is a hash: a hit counts only when the stored embedding is the same.
        if let Some(prepared) = cached.filter(|p| p.embedding == prompt) {
            return prepared;
        }
        let prepared = Arc::new(self.compute(prompt));
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .put(key, Arc::clone(&prepared));
        prepared
    }

    fn compute(&self, prompt: &[f32]) -> PreparedPrompt {
        let is_zero = prompt.iter().all(|&x| x == 0.0);
        let mut hidden = vec![0.0f32; self.projector_hidden.out_dim];
        self.projector_hidden.apply_row(prompt, &mut hidden);
        relu(&mut hidden);
        let mut projected = vec![0.0f32; self.dim];
        self.projector_output.apply_row(&hidden, &mut projected);
        let mut router = vec![0.0f32; self.router_bias.len()];
        self.router_prompt
            .apply_plus(prompt, &self.router_bias, &mut router);
        let mut experts = vec![0.0f32; self.experts_bias.len()];
        self.experts_prompt
            .apply_plus(&projected, &self.experts_bias, &mut experts);
        PreparedPrompt {
            embedding: prompt.to_vec(),
            is_zero,
            projected,
            router,
            experts,
        }
    }

    /// Writes `h' = [h, 0] + strength · Σ g_k Δ_k` (`d + A` floats) to `out` and the gates to
    /// `gates` (K floats), given `h`'s [`Steering::history_terms`]. A zero prompt or zero
    /// strength gives exactly `[h, 0]`, gates zero.
    pub fn steer(
        &self,
        h: &[f32],
        terms: &[f32],
        prompt: &PreparedPrompt,
        strength: f32,
        out: &mut [f32],
        gates: &mut [f32],
    ) {
        let d = self.dim;
        out[..d].copy_from_slice(h);
        out[d..].iter_mut().for_each(|x| *x = 0.0);
        gates.iter_mut().for_each(|g| *g = 0.0);
        if strength == 0.0 || prompt.is_zero {
            return;
        }
        STEER_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let SteerScratch {
                product,
                router,
                hidden,
                delta,
            } = &mut *scratch;
            let (experts_terms, router_terms) = terms.split_at(prompt.experts.len());
            router.clear();
            router.extend(router_terms.iter().zip(&prompt.router).map(|(h, e)| h + e));
            relu(router);
            self.router_output.apply_row(router, gates);
            softmax(gates);
            product.clear();
            product.extend(h.iter().zip(&prompt.projected).map(|(hv, pv)| hv * pv));
            hidden.resize(prompt.experts.len(), 0.0);
            self.experts_product
                .apply_plus(product, experts_terms, hidden);
            for (x, p) in hidden.iter_mut().zip(&prompt.experts) {
                *x += p;
            }
            relu(hidden);
            delta.resize(d + self.attribute_dim, 0.0);
            let width = hidden.len() / self.experts.len().max(1);
            for ((expert, part), &g) in self
                .experts
                .iter()
                .zip(hidden.chunks_exact(width.max(1)))
                .zip(gates.iter())
            {
                expert.output.apply_sparse(part, 1, delta);
                axpy(strength * g, delta, out);
            }
        });
    }
}

/// The per-thread buffers of [`Steering::steer`], reused so a query allocates nothing.
#[derive(Default)]
struct SteerScratch {
    product: Vec<f32>,
    router: Vec<f32>,
    hidden: Vec<f32>,
    delta: Vec<f32>,
}

thread_local! {
    static STEER_SCRATCH: RefCell<SteerScratch> = RefCell::new(SteerScratch::default());
}

/// A hash of the embedding's bits (a cache key; hits are confirmed by comparing embeddings):
/// four interleaved multiply-rotate chains, a fraction of SipHash's cost on every query.
fn embedding_key(embedding: &[f32]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, bits: u64| (h.rotate_left(5) ^ bits).wrapping_mul(K);
    let mix = |h: u64, x: &f32| step(h, u64::from(x.to_bits()));
    let mut lanes = [1u64, 2, 3, 4];
    let chunks = embedding.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane = mix(*lane, x);
        }
    }
    let h = tail.iter().fold(lanes[0], mix);
    lanes[1..].iter().fold(h, |h, &lane| step(h, lane))
}
