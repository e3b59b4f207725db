//! The steering head: prompt projector, fusion, router and experts, and the modulation
//! `h' = [h, 0_A] + strength · Σ_k g_k Δ_k` (formulas in `docs/bundle.md`).

use crate::backbone::sasrec_linear as linear;
use crate::bundle::{Bundle, BundleError};
use crate::linalg::{axpy, relu, softmax, Linear};

/// The steering weights.
#[derive(Debug)]
pub struct Steering {
    dim: usize,
    attribute_dim: usize,
    prompt_dim: usize,
    projector_hidden: Linear,
    projector_output: Linear,
    router_hidden: Linear,
    router_output: Linear,
    experts_in: Vec<Linear>,
    experts_out: Vec<Linear>,
}

impl Steering {
    pub fn from_bundle(bundle: &mut Bundle) -> Result<Steering, BundleError> {
        let d = bundle.dim;
        let s = bundle.steer.clone();
        let k = s.positive_experts + s.negative_experts;
        let (e, a, h) = (s.prompt_dim, s.attribute_dim, s.expert_hidden);
        let projector_hidden = linear(
            bundle,
            "steer.projector.hidden_layer",
            s.projector_hidden,
            e,
        )?;
        let projector_output = linear(
            bundle,
            "steer.projector.output_layer",
            d,
            s.projector_hidden,
        )?;
        let router_hidden = linear(bundle, "steer.router.hidden_layer", s.router_hidden, e + d)?;
        let router_output = linear(bundle, "steer.router.output_layer", k, s.router_hidden)?;
        let in_weight = bundle.take("steer.experts.in_weight")?.data;
        let in_bias = bundle.take("steer.experts.in_bias")?.data;
        let out_weight = bundle.take("steer.experts.out_weight")?.data;
        let out_bias = bundle.take("steer.experts.out_bias")?.data;
        let split = |w: &[f32], b: &[f32], out_dim: usize, in_dim: usize| -> Vec<Linear> {
            w.chunks_exact(out_dim * in_dim)
                .zip(b.chunks_exact(out_dim))
                .filter_map(|(w, b)| Linear::new(w.to_vec(), b.to_vec(), out_dim, in_dim))
                .collect()
        };
        let experts_in = split(&in_weight, &in_bias, h, 3 * d);
        let experts_out = split(&out_weight, &out_bias, d + a, h);
        if experts_in.len() != k || experts_out.len() != k {
            return Err(BundleError::Invalid {
                file: crate::bundle::WEIGHTS_FILE.into(),
                message: format!("steer.experts: expected {k} experts"),
            });
        }
        Ok(Steering {
            dim: d,
            attribute_dim: a,
            prompt_dim: e,
            projector_hidden,
            projector_output,
            router_hidden,
            router_output,
            experts_in,
            experts_out,
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
        self.experts_in.len()
    }

    /// Writes `h' = [h, 0] + strength · Σ g_k Δ_k` (`d + A` floats) to `out` and the gates to
    /// `gates` (K floats). A zero prompt or zero strength gives exactly `[h, 0]`, gates zero.
    pub fn steer(
        &self,
        h: &[f32],
        prompt: &[f32],
        strength: f32,
        out: &mut [f32],
        gates: &mut [f32],
    ) {
        let d = self.dim;
        out[..d].copy_from_slice(h);
        out[d..].iter_mut().for_each(|x| *x = 0.0);
        gates.iter_mut().for_each(|g| *g = 0.0);
        if strength == 0.0 || prompt.iter().all(|&x| x == 0.0) {
            return;
        }
        let mut hidden = vec![0.0f32; self.projector_hidden.out_dim];
        self.projector_hidden.apply_row(prompt, &mut hidden);
        relu(&mut hidden);
        let mut fused = vec![0.0f32; 3 * d];
        let (hh, rest) = fused.split_at_mut(d);
        let (p, hp) = rest.split_at_mut(d);
        hh.copy_from_slice(h);
        self.projector_output.apply_row(&hidden, p);
        for ((o, hv), pv) in hp.iter_mut().zip(h).zip(p.iter()) {
            *o = hv * pv;
        }
        let mut router_input = Vec::with_capacity(self.prompt_dim + d);
        router_input.extend_from_slice(prompt);
        router_input.extend_from_slice(h);
        let mut router_hidden = vec![0.0f32; self.router_hidden.out_dim];
        self.router_hidden
            .apply_row(&router_input, &mut router_hidden);
        relu(&mut router_hidden);
        self.router_output.apply_row(&router_hidden, gates);
        softmax(gates);
        let mut expert_hidden = vec![0.0f32; self.experts_in[0].out_dim];
        let mut delta = vec![0.0f32; d + self.attribute_dim];
        for ((inp, outp), &g) in self
            .experts_in
            .iter()
            .zip(&self.experts_out)
            .zip(gates.iter())
        {
            inp.apply_row(&fused, &mut expert_hidden);
            relu(&mut expert_hidden);
            outp.apply_row(&expert_hidden, &mut delta);
            axpy(strength * g, &delta, out);
        }
    }
}
