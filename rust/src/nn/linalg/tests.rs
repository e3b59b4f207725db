//! Every kernel level against the portable one and a naive sum, on many shapes with tails.

use super::*;

fn wave(n: usize, step: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * step).sin()).collect()
}

/// A layer with wave weights and bias.
fn wave_layer(out_dim: usize, in_dim: usize) -> Linear {
    Linear::new(
        wave(out_dim * in_dim, 0.37),
        wave(out_dim, 0.1),
        out_dim,
        in_dim,
    )
    .unwrap()
}

/// The levels this CPU runs (the others would be capped to these anyway).
fn levels() -> Vec<Level> {
    Level::ALL
        .into_iter()
        .filter(|&l| l <= detected())
        .collect()
}

#[test]
fn the_environment_caps_the_level() {
    assert_eq!(capped(Level::Avx512, None), (Level::Avx512, None));
    assert_eq!(capped(Level::Avx512, Some("")), (Level::Avx512, None));
    assert_eq!(capped(Level::Avx512, Some("AVX2")), (Level::Avx2, None));
    assert_eq!(
        capped(Level::Avx512, Some("portable")),
        (Level::Portable, None)
    );
    let (level, warning) = capped(Level::Avx2, Some("avx512"));
    assert_eq!(level, Level::Avx2);
    assert!(warning.unwrap().contains("runs up to avx2"));
    let (level, warning) = capped(Level::Avx2, Some("sse9"));
    assert_eq!(level, Level::Avx2);
    assert!(warning.unwrap().contains("not one of"));
    assert!(super::level() <= detected());
}

#[test]
fn gemm_at_every_level_matches_portable_on_every_tail() {
    // Columns cover the 64-, 16- and 8-wide blocks and every masked remainder; rows every
    // tile remainder; strides wider than the operands.
    let depths = [1, 3, 32, 64, 67];
    let widths = (1..=40).chain([63, 64, 65, 82, 127, 128, 130, 192, 256]);
    for cols in widths {
        for &depth in &depths {
            for rows in [1, 2, 5, 6, 7, 13, 50] {
                let (xs, ws, os) = (depth + 3, cols + 5, cols + 2);
                let x = wave(rows * xs, 0.37);
                let w = wave(depth * ws, 0.11);
                let bias = wave(cols, 0.7);
                let shape = Shape { rows, depth, cols };
                for with_bias in [false, true] {
                    let b = with_bias.then_some(&bias[..]);
                    let run = |level| {
                        let mut out = vec![f32::NAN; rows * os];
                        let product = Product {
                            x: Operand::new(&x, xs),
                            w: Operand::new(&w, ws),
                            bias: b,
                            shape,
                            skip_zeros: false,
                        };
                        gemm_at(level, &product, &mut out, os);
                        out
                    };
                    let portable = run(Level::Portable);
                    let simd: Vec<Vec<f32>> = levels()[1..].iter().map(|&l| run(l)).collect();
                    for r in 0..rows {
                        for c in 0..os {
                            let at = r * os + c;
                            if c >= cols {
                                // Columns past `cols` are never written.
                                assert!(portable[at].is_nan());
                                simd.iter().for_each(|o| assert!(o[at].is_nan()));
                                continue;
                            }
                            let naive = (0..depth)
                                .map(|i| x[r * xs + i] * w[i * ws + c])
                                .sum::<f32>()
                                + if with_bias { bias[c] } else { 0.0 };
                            let tolerance = 1e-5 * (1.0 + depth as f32);
                            assert!((portable[at] - naive).abs() < tolerance, "{shape:?}");
                            for o in &simd {
                                assert!((o[at] - portable[at]).abs() < tolerance, "{shape:?}");
                                // AVX2 and AVX-512 give the same bits.
                                assert_eq!(o[at].to_bits(), simd[0][at].to_bits(), "{shape:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn skipping_zero_inputs_gives_the_dense_values_at_every_level() {
    // Inputs shaped like a ReLU's output: mostly zeros (some negative), inputs zero in whole
    // row tiles or in all rows, and a NaN that must still reach its outputs.
    for (out_dim, in_dim) in [(1, 1), (64, 256), (92, 256), (7, 33), (130, 17), (16, 16)] {
        let layer = wave_layer(out_dim, in_dim);
        for rows in [1, 2, 5, 6, 7, 13, 50] {
            for keep in [0, 1, 3, 7] {
                let mut x: Vec<f32> = wave(rows * in_dim, 0.71)
                    .iter()
                    .enumerate()
                    .map(|(at, &v)| {
                        let (r, i) = (at / in_dim, at % in_dim);
                        if (i * 5 + r / 6) % 7 < keep {
                            v.max(0.0)
                        } else {
                            -0.0 * v.abs()
                        }
                    })
                    .collect();
                if keep == 3 && rows > 4 {
                    x[4 * in_dim + in_dim / 2] = f32::NAN;
                }
                for level in levels() {
                    let mut dense = vec![0.0; rows * out_dim];
                    let product = Product {
                        x: Operand::new(&x, in_dim),
                        w: Operand::new(&layer.transposed, out_dim),
                        bias: Some(&layer.bias),
                        shape: Shape {
                            rows,
                            depth: in_dim,
                            cols: out_dim,
                        },
                        skip_zeros: false,
                    };
                    gemm_at(level, &product, &mut dense, out_dim);
                    let mut sparse = vec![0.0; rows * out_dim];
                    layer.apply_sparse_at(level, &x, rows, &mut sparse);
                    // The same values: only a zero's sign may differ.
                    let bits =
                        |v: &[f32]| v.iter().map(|x| (x + 0.0).to_bits()).collect::<Vec<_>>();
                    let at = format!("{out_dim}×{in_dim} rows {rows} keep {keep} {level:?}");
                    assert_eq!(bits(&sparse), bits(&dense), "{at}");
                }
            }
        }
    }
}

#[test]
fn linear_one_row_equals_many_rows_bit_for_bit() {
    for (out_dim, in_dim, rows) in [(5, 7, 3), (128, 64, 50), (83, 64, 4), (200, 33, 2)] {
        let layer = wave_layer(out_dim, in_dim);
        let x = wave(rows * in_dim, 0.11);
        let mut out = vec![0.0; rows * out_dim];
        layer.apply(&x, rows, &mut out);
        for r in 0..rows {
            let mut single = vec![0.0; out_dim];
            layer.apply_row(&x[r * in_dim..(r + 1) * in_dim], &mut single);
            assert_eq!(single, out[r * out_dim..(r + 1) * out_dim]);
            let mut part = vec![0.0; 10];
            let columns = 2.min(out_dim)..out_dim.min(9);
            let width = columns.len();
            layer.apply_columns(&x[r * in_dim..], in_dim, 1, columns.clone(), &mut part, 10);
            assert_eq!(part[..width], single[columns]);
        }
    }
}

#[test]
fn scaled_softmax_at_every_level_matches_the_exact_one() {
    for n in (1..40).chain([50, 64, 200, 201]) {
        let x: Vec<f32> = wave(n, 0.77).iter().map(|v| v * 30.0).collect();
        let mut exact = x.clone();
        exact.iter_mut().for_each(|v| *v *= 0.17);
        softmax(&mut exact);
        let mut first: Option<Vec<f32>> = None;
        for level in levels() {
            let mut y = x.clone();
            scaled_softmax_at(level, &mut y, 0.17);
            for (a, b) in y.iter().zip(&exact) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "n = {n}, {level:?}"
                );
            }
            if level >= Level::Avx2 {
                match &first {
                    None => first = Some(y),
                    Some(f) => assert_eq!(f, &y, "n = {n}: AVX2 and AVX-512 differ"),
                }
            }
        }
    }
    // Far below the maximum: no overflow of the exponent, a tiny positive weight.
    let mut x = vec![0.0, -500.0];
    scaled_softmax(&mut x, 1.0);
    assert_eq!(x[0], 1.0);
    assert!(x[1] >= 0.0 && x[1] < 1e-30);
}

#[test]
fn dot_and_axpy_match_naive_at_every_length() {
    for n in 0..70 {
        let a = wave(n, 0.37);
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-5, "dot, n = {n}");
        assert!(
            (dot_portable(&a, &b) - naive).abs() < 1e-5,
            "portable dot, n = {n}"
        );
        let mut y = b.clone();
        axpy(0.5, &a, &mut y);
        for i in 0..n {
            assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6, "axpy, n = {n}");
        }
    }
}

#[test]
fn gemv_and_its_transpose_match_naive_on_strided_rows() {
    let (rows, stride, width) = (7, 45, 37);
    let data = wave(rows * stride, 0.13);
    let x: Vec<f32> = (0..width).map(|i| (i as f32 * 0.7).cos()).collect();
    let mut out = vec![0.0; rows];
    gemv(&data, stride, &x, &mut out);
    let w: Vec<f32> = (0..rows).map(|i| i as f32 - 2.5).collect();
    let mut back = vec![1.0; width];
    gemv_transposed(&w, &data, stride, &mut back);
    for r in 0..rows {
        let naive: f32 = (0..width).map(|c| data[r * stride + c] * x[c]).sum();
        assert!((out[r] - naive).abs() < 1e-5);
    }
    for c in 0..width {
        let naive: f32 = 1.0 + (0..rows).map(|r| w[r] * data[r * stride + c]).sum::<f32>();
        assert!((back[c] - naive).abs() < 1e-4);
    }
}

#[test]
fn gemv_equals_dot_bit_for_bit() {
    // The exact scan (gemv) and HNSW rescoring (dot) must give identical scores.
    for width in [1, 7, 8, 15, 16, 24, 32, 37, 64, 80, 83, 128] {
        for rows in [1, 3, 4, 5, 8, 13] {
            let stride = width + 3;
            let data: Vec<f32> = wave(rows * stride, 0.173).iter().map(|v| v * 3.0).collect();
            let x: Vec<f32> = (0..width).map(|i| (i as f32 * 0.71).cos()).collect();
            let mut out = vec![0.0; rows];
            gemv(&data, stride, &x, &mut out);
            for (r, &o) in out.iter().enumerate() {
                let single = dot(&data[r * stride..r * stride + width], &x);
                assert_eq!(o.to_bits(), single.to_bits(), "width {width} row {r}");
            }
            // Every SIMD level (the AVX-512 kernel reorganises the AVX2 one's sums).
            for &level in &levels()[1..] {
                let mut at_level = vec![0.0; rows];
                gemv_at(level, &data, stride, &x, &mut at_level);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&at_level), bits(&out), "width {width} {level:?}");
            }
        }
    }
}

#[test]
fn layer_norm_gives_the_same_bits_at_every_level() {
    for dim in [1, 7, 8, 9, 64, 67] {
        let x: Vec<f32> = wave(5 * dim, 0.31).iter().map(|v| v * 4.0 + 1.0).collect();
        let (w, b) = (wave(dim, 0.9), wave(dim, 0.4));
        let mut outs = levels().into_iter().map(|level| {
            let mut y = x.clone();
            layer_norm_at(level, &mut y, dim, &w, &b, 1e-5);
            y
        });
        let portable = outs.next().unwrap();
        outs.for_each(|y| assert_eq!(y, portable, "dim {dim}"));
    }
}

#[test]
fn layer_norm_gives_zero_mean_unit_variance() {
    let mut x = vec![1.0, 2.0, 3.0, 4.0];
    layer_norm(&mut x, 4, &[1.0; 4], &[0.0; 4], 1e-5);
    let mean: f32 = x.iter().sum::<f32>() / 4.0;
    let var: f32 = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-3);
}

#[test]
fn softmax_sums_to_one_and_survives_large_inputs() {
    let mut x = vec![1000.0, 1001.0, 999.0];
    softmax(&mut x);
    assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(x[1] > x[0] && x[0] > x[2]);
}
