//! The decode matmul alone: `[m, d_in] x W` for the Qwen2.5-0.5B projection shapes, by burn's
//! own tensors (f32, and bf16/f16 weights and activations on the same backend) and by the packed
//! kernel of `qwen_model::packed` (f32, bf16, f16 weights with f32 activations; q8_0 weights with
//! the activations quantized to Q8_0 blocks, as llama.cpp multiplies them). One JSON line
//! per case: milliseconds per call (best of `--reps`) and GB/s of weight bytes read. This is the
//! measurement behind the choice of our own kernel (docs/model.md, "Weights in bf16, f16 and
//! Q8_0").

use std::time::Instant;

use burn::tensor::{Distribution, FloatDType, Tensor};
use clap::Parser;
use qwen::backend::{device, Backend};
use qwen_model::packed::PackedMatrix;
use qwen_model::WeightDtype;

#[derive(Parser)]
#[command(name = "matvec_speed")]
struct Args {
    /// Activation rows (1: decode; 128: a prefill chunk).
    #[arg(long, default_value_t = 1)]
    m: usize,
    #[arg(long, default_value_t = 20)]
    reps: usize,
}

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(case: &str, shape: (usize, usize), m: usize, bytes: usize, secs: f64) {
    println!(
        "{}",
        serde_json::json!({
            "case": case, "d_in": shape.0, "d_out": shape.1, "m": m,
            "ms": secs * 1e3, "weight_gb_per_s": bytes as f64 / secs / 1e9,
        })
    );
}

fn main() {
    let args = Args::parse();
    let dev = device();
    let m = args.m;
    for (d_in, d_out) in [(896, 4864), (4864, 896), (896, 151_936)] {
        let w = Tensor::<Backend, 2>::random([d_in, d_out], Distribution::Normal(0.0, 0.02), &dev);
        let x = Tensor::<Backend, 2>::random([m, d_in], Distribution::Normal(0.0, 1.0), &dev);
        let n = d_in * d_out;
        let secs = best(args.reps, || {
            x.clone().matmul(w.clone()).into_data();
        });
        report("burn f32", (d_in, d_out), m, 4 * n, secs);
        // The same product against a transposed view of a `[d_out, d_in]` matrix (how a tile of
        // packed rows, dequantized in its own row order, would be multiplied).
        let wt = w.clone().transpose().into_data();
        let wt = Tensor::<Backend, 2>::from_data(wt, &dev);
        let secs = best(args.reps, || {
            x.clone().matmul(wt.clone().transpose()).into_data();
        });
        report("burn f32, transposed view", (d_in, d_out), m, 4 * n, secs);
        for (name, dtype) in [("burn bf16", FloatDType::BF16), ("burn f16", FloatDType::F16)] {
            let (wc, xc) = (w.clone().cast(dtype), x.clone().cast(dtype));
            let secs = best(args.reps, || {
                xc.clone().matmul(wc.clone()).into_data();
            });
            report(name, (d_in, d_out), m, 2 * n, secs);
        }
        let values = w.clone().into_data().to_vec::<f32>().unwrap();
        let host_x = x.clone().into_data().to_vec::<f32>().unwrap();
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0] {
            let p = PackedMatrix::from_f32_transposed(&values, d_in, d_out, dtype).unwrap();
            let secs = best(args.reps, || {
                std::hint::black_box(p.matmul(&host_x, m));
            });
            report(&format!("packed {dtype}"), (d_in, d_out), m, p.bytes(), secs);
        }
    }
}
