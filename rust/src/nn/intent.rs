//! The intent read-out head (bundle version 2, `docs/bundle.md` "intent"): what a prompt asks
//! for and what it refuses, per attribute value.
//!
//! A two-layer MLP over the sentence embedding `e` gives three logits per value (none, asked,
//! refused); their softmax is the reading:
//!
//! ```text
//! logits = W_out relu(W_hid e + b_hid) + b_out          (3V, viewed as V × 3)
//! p_v    = softmax(logits[3v .. 3v+3])                  (none, asked, refused)
//! prompt input = [e, p_asked(v_1..v_V), p_refused(v_1..v_V)]       (E + 2V floats)
//! ```
//!
//! A zero embedding (the blank prompt) has, by definition, a zero reading, so its whole prompt
//! input is zero and the steering leaves the backbone's vector exactly as it is.

use crate::bundle::{BundleError, IntentConfig, IntentWeights};
use crate::nn::backbone::linear;
use crate::nn::linalg::{relu, softmax, Linear};

/// Class indices of a value's softmax.
pub const NONE: usize = 0;
pub const ASKED: usize = 1;
pub const REFUSED: usize = 2;

/// Whether a prompt asks for a value or refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    Asked,
    Refused,
}

impl Polarity {
    pub fn as_str(self) -> &'static str {
        match self {
            Polarity::Asked => "asked",
            Polarity::Refused => "refused",
        }
    }
}

/// One detected value: index `value` into [`IntentHead::values`], its polarity and the
/// probability of that polarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub value: usize,
    pub polarity: Polarity,
    pub confidence: f32,
}

/// The head's weights and thresholds.
#[derive(Debug)]
pub struct IntentHead {
    values: Vec<(String, String)>,
    embedding_dim: usize,
    hidden: Linear,
    output: Linear,
    refuse_threshold: f64,
    detect_threshold: f64,
}

impl IntentHead {
    /// Builds a head from its layers (PyTorch `nn.Linear` layout: `out × in`); an error if
    /// their sizes disagree with `config`.
    pub fn new(
        config: &IntentConfig,
        hidden: Linear,
        output: Linear,
    ) -> Result<IntentHead, String> {
        let v = config.num_values();
        if hidden.in_dim != config.embedding_dim
            || hidden.out_dim != config.hidden
            || output.in_dim != config.hidden
            || output.out_dim != 3 * v
        {
            return Err(format!(
                "intent: layers ({} → {} → {}) do not match dpr.json ({} → {} → 3 × {v})",
                hidden.in_dim, hidden.out_dim, output.out_dim, config.embedding_dim, config.hidden
            ));
        }
        Ok(IntentHead {
            values: config.values.clone(),
            embedding_dim: config.embedding_dim,
            hidden,
            output,
            refuse_threshold: config.refuse_threshold,
            detect_threshold: config.detect_threshold,
        })
    }

    /// The head `config` describes, from its weights.
    pub fn from_weights(
        config: &IntentConfig,
        w: IntentWeights<Vec<f32>>,
    ) -> Result<IntentHead, BundleError> {
        let hidden = linear(w.hidden, "intent.hidden_layer")?;
        let output = linear(w.output, "intent.output_layer")?;
        IntentHead::new(config, hidden, output).map_err(|message| BundleError::Tensor {
            tensor: "intent".into(),
            message,
        })
    }

    /// `(family, value)` of each output, in order.
    pub fn values(&self) -> &[(String, String)] {
        &self.values
    }

    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    /// Width of the embedding the head reads.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Floats appended to the embedding: `2V` (asked, then refused probabilities).
    pub fn feature_dim(&self) -> usize {
        2 * self.values.len()
    }

    pub fn refuse_threshold(&self) -> f64 {
        self.refuse_threshold
    }

    pub fn detect_threshold(&self) -> f64 {
        self.detect_threshold
    }

    /// The `(V, 3)` probabilities (none, asked, refused) of embedding `e`, row-major; all zero
    /// for a zero embedding.
    pub fn probabilities(&self, e: &[f32]) -> Vec<f32> {
        let v = self.num_values();
        let mut probs = vec![0.0f32; 3 * v];
        if e.iter().all(|&x| x == 0.0) {
            return probs;
        }
        let mut hidden = vec![0.0f32; self.hidden.out_dim];
        self.hidden.apply_row(e, &mut hidden);
        relu(&mut hidden);
        self.output.apply_row(&hidden, &mut probs);
        probs.chunks_exact_mut(3).for_each(softmax);
        probs
    }

    /// Writes the features `[p_asked(v_1..v_V), p_refused(v_1..v_V)]` (`2V` floats) of `e`
    /// (`embedding_dim` floats) to `out`; zeros for a zero embedding.
    pub fn features(&self, e: &[f32], out: &mut [f32]) {
        let v = self.num_values();
        let probs = self.probabilities(e);
        for (j, p) in probs.chunks_exact(3).enumerate() {
            out[j] = p[ASKED];
            out[v + j] = p[REFUSED];
        }
    }

    /// `[e, features(e)]`: the steering head's prompt input.
    pub fn prompt_input(&self, e: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; e.len() + self.feature_dim()];
        out[..e.len()].copy_from_slice(e);
        self.features(e, &mut out[e.len()..]);
        out
    }

    /// The asked and refused probabilities held in the tail of a prompt input (empty if it
    /// is too short to hold them).
    fn split<'a>(&self, prompt_input: &'a [f32]) -> (&'a [f32], &'a [f32]) {
        let v = self.num_values();
        prompt_input
            .get(self.embedding_dim..self.embedding_dim + 2 * v)
            .map_or((&[], &[]), |tail| tail.split_at(v))
    }

    /// The values a prompt input (`embedding_dim + 2V` floats, as `prompt_input` makes) asks
    /// for or refuses with probability ≥ `detect_threshold`, most confident first (ties in
    /// value order). A value both of whose probabilities pass is read as the likelier one.
    pub fn read(&self, prompt_input: &[f32]) -> Vec<Reading> {
        let (asked, refused) = self.split(prompt_input);
        let mut readings: Vec<Reading> = asked
            .iter()
            .zip(refused)
            .enumerate()
            .filter_map(|(value, (&a, &r))| {
                let (polarity, confidence) = if r >= a {
                    (Polarity::Refused, r)
                } else {
                    (Polarity::Asked, a)
                };
                (f64::from(confidence) >= self.detect_threshold).then_some(Reading {
                    value,
                    polarity,
                    confidence,
                })
            })
            .collect();
        readings.sort_by(|x, y| y.confidence.total_cmp(&x.confidence));
        readings
    }

    /// The values `read` would report (asked or refused with probability ≥
    /// `detect_threshold`), in value order, each with its polarity, without allocating.
    pub fn detected<'a>(
        &'a self,
        prompt_input: &'a [f32],
    ) -> impl Iterator<Item = (usize, Polarity)> + 'a {
        let (asked, refused) = self.split(prompt_input);
        asked
            .iter()
            .zip(refused)
            .enumerate()
            .filter(|(_, (&a, &r))| f64::from(a.max(r)) >= self.detect_threshold)
            .map(|(j, (&a, &r))| {
                (
                    j,
                    if r >= a {
                        Polarity::Refused
                    } else {
                        Polarity::Asked
                    },
                )
            })
    }

    /// Indices of the values a prompt input refuses with probability ≥ `refuse_threshold`
    /// (what `mode="auto"` hard-excludes), in value order.
    pub fn refused(&self, prompt_input: &[f32]) -> Vec<usize> {
        let (_, refused) = self.split(prompt_input);
        refused
            .iter()
            .enumerate()
            .filter(|(_, &r)| f64::from(r) >= self.refuse_threshold)
            .map(|(j, _)| j)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(values: &[(&str, &str)], e: usize, h: usize) -> IntentConfig {
        IntentConfig {
            values: values
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
            embedding_dim: e,
            hidden: h,
            features: None,
            activation: None,
            refuse_threshold: 0.6,
            detect_threshold: 0.5,
        }
    }

    /// E = 2, H = 2, V = 2, with weights chosen so that every number below is exact or
    /// computed by hand.
    fn head() -> IntentHead {
        let c = config(&[("genre", "Comedy"), ("genre", "Horror")], 2, 2);
        // hidden = relu([[1, 0], [0, -1]] e + [0, 0.5])
        let hidden = Linear::new(vec![1.0, 0.0, 0.0, -1.0], vec![0.0, 0.5], 2, 2).unwrap();
        // logits (6 × 2): value 0 reads hidden[0] into "asked", value 1 hidden[1] into "refused".
        let output = Linear::new(
            vec![
                0.0, 0.0, // v0 none
                1.0, 0.0, // v0 asked
                0.0, 0.0, // v0 refused
                0.0, 0.0, // v1 none
                0.0, 0.0, // v1 asked
                0.0, 2.0, // v1 refused
            ],
            vec![0.0, 0.0, 0.0, 0.0, 0.0, -1.0],
            6,
            2,
        )
        .unwrap();
        IntentHead::new(&c, hidden, output).unwrap()
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn probabilities_match_hand_computed_softmax() {
        let head = head();
        // e = [ln 3, -0.5]: hidden = relu([ln 3, 0.5 + 0.5]) = [ln 3, 1].
        // v0 logits [0, ln 3, 0] → [1/5, 3/5, 1/5]; v1 logits [0, 0, 2 - 1] → [1, 1, e]/(2+e).
        let e = [3f32.ln(), -0.5];
        let p = head.probabilities(&e);
        let en = std::f64::consts::E;
        let want = [
            0.2,
            0.6,
            0.2,
            1.0 / (2.0 + en),
            1.0 / (2.0 + en),
            en / (2.0 + en),
        ];
        for (got, want) in p.iter().zip(want) {
            assert!(close(*got, want), "{p:?} vs {want:?}");
        }
        let mut features = [9.0f32; 4];
        head.features(&e, &mut features);
        let want = [0.6, 1.0 / (2.0 + en), 0.2, en / (2.0 + en)];
        for (got, want) in features.iter().zip(want) {
            assert!(close(*got, want), "{features:?}");
        }
        let input = head.prompt_input(&e);
        assert_eq!(input.len(), 6);
        assert_eq!(&input[..2], &e);
        assert_eq!(&input[2..], &features);
    }

    #[test]
    fn detected_lists_what_read_lists_with_its_polarity() {
        let head = head();
        // Tails [p_asked(v0), p_asked(v1), p_refused(v0), p_refused(v1)] after E = 2 floats.
        type Expected = Vec<(usize, Polarity)>;
        let cases: [([f32; 4], Expected); 4] = [
            (
                [0.7, 0.1, 0.2, 0.8],
                vec![(0, Polarity::Asked), (1, Polarity::Refused)],
            ),
            ([0.4, 0.3, 0.1, 0.4], vec![]),
            ([0.25, 0.1, 0.5, 0.2], vec![(0, Polarity::Refused)]),
            ([0.1, 0.5, 0.1, 0.5], vec![(1, Polarity::Refused)]), // a tie reads as refused
        ];
        for (tail, want) in cases {
            let input = [0.0, 0.0, tail[0], tail[1], tail[2], tail[3]];
            let got: Vec<_> = head.detected(&input).collect();
            assert_eq!(got, want, "{tail:?}");
            let mut read: Vec<_> = head
                .read(&input)
                .iter()
                .map(|r| (r.value, r.polarity))
                .collect();
            read.sort_by_key(|&(j, _)| j);
            assert_eq!(read, want, "read and detected agree");
        }
    }

    #[test]
    fn relu_cuts_negative_hidden_units() {
        let head = head();
        // e = [-5, 3]: hidden = relu([-5, -3 + 0.5]) = [0, 0]: every value reads
        // logits [0, 0, 0] except v1's refused bias -1.
        let p = head.probabilities(&[-5.0, 3.0]);
        let en = std::f64::consts::E;
        let want = [
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
            en / (2.0 * en + 1.0),
            en / (2.0 * en + 1.0),
            1.0 / (2.0 * en + 1.0),
        ];
        for (got, want) in p.iter().zip(want) {
            assert!(close(*got, want), "{p:?}");
        }
    }

    #[test]
    fn zero_embedding_reads_nothing() {
        let head = head();
        assert!(head.probabilities(&[0.0, 0.0]).iter().all(|&x| x == 0.0));
        let input = head.prompt_input(&[0.0, -0.0]);
        assert!(input.iter().all(|&x| x == 0.0));
        assert!(head.read(&input).is_empty());
        assert!(head.refused(&input).is_empty());
    }

    #[test]
    fn read_and_refused_apply_the_thresholds() {
        let head = head();
        // Hand-made tails: [asked v0, asked v1, refused v0, refused v1].
        let input = [0.0, 0.0, 0.55, 0.1, 0.3, 0.8];
        let readings = head.read(&input);
        assert_eq!(
            readings,
            vec![
                Reading {
                    value: 1,
                    polarity: Polarity::Refused,
                    confidence: 0.8
                },
                Reading {
                    value: 0,
                    polarity: Polarity::Asked,
                    confidence: 0.55
                },
            ]
        );
        assert_eq!(head.refused(&input), vec![1]);
        // Exactly at the thresholds counts; just below does not.
        assert_eq!(head.refused(&[0.0, 0.0, 0.0, 0.0, 0.6, 0.5999]), vec![0]);
        let at = head.read(&[0.0, 0.0, 0.5, 0.0, 0.0, 0.4999]);
        assert_eq!(at.len(), 1);
        assert_eq!((at[0].value, at[0].polarity), (0, Polarity::Asked));
        // The hand-computed prompt: v0 asked 0.6 (listed), v1 refused e/(2+e) ≈ 0.576 (listed,
        // below the refuse threshold 0.6).
        let input = head.prompt_input(&[3f32.ln(), -0.5]);
        let readings = head.read(&input);
        assert_eq!(readings.len(), 2);
        assert_eq!(
            (readings[0].value, readings[0].polarity),
            (0, Polarity::Asked)
        );
        assert_eq!(
            (readings[1].value, readings[1].polarity),
            (1, Polarity::Refused)
        );
        assert!(head.refused(&input).is_empty());
    }

    #[test]
    fn mismatched_layers_are_rejected() {
        let c = config(&[("genre", "Comedy")], 2, 2);
        let hidden = Linear::new(vec![0.0; 4], vec![0.0; 2], 2, 2).unwrap();
        let wrong = Linear::new(vec![0.0; 4], vec![0.0; 2], 2, 2).unwrap();
        assert!(IntentHead::new(&c, hidden, wrong).is_err());
    }
}
