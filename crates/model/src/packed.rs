//! Weights kept in memory as bf16, f16 or Q8_0 for CPU inference, and the matmul that reads them.
//!
//! Decode is bound by memory bandwidth: every token reads every weight once. A [`PackedMatrix`]
//! holds a projection's weight `[d_out, d_in]` (HF's layout, llama.cpp's row order) as 2 bytes a
//! value (bf16, f16) or 34 bytes per 32 values (Q8_0: llama.cpp's `block_q8_0`, one f16 scale and
//! 32 signed bytes, `w = q * d`), and [`PackedMatrix::matmul`] multiplies f32 activations by it
//! without ever building an f32 copy of the weight: each row's values are widened to f32 in SIMD
//! registers, multiplied into the activations and summed there. A Q8_0 weight's product is
//! llama.cpp's: the activation rows are quantized to Q8_0 blocks too (per call, a few KiB) and
//! each block pair is an integer dot product (`vpdpbusd` on CPUs with AVX-512 VNNI). A bf16
//! weight's prefill (16 rows and more) rounds the activation rows to bf16, as llama.cpp's bf16
//! matmul does. Prefill multiplies in f32 with the `gemm` crate, a task of 64 weight rows at a
//! time (dequantized into the task's buffer). Activations between matmuls, norms, RoPE, attention
//! and residuals stay f32.
//!
//! Why our own kernel and not burn's: burn 0.21's Flex backend has bf16/f16 tensors, but its
//! matmul of a `[1, d_in]` activation by a bf16 weight (the decode shape) was measured slower than
//! its f32 matmul (docs/model.md, "Weights in bf16, f16 and Q8_0"), and burn has no Q8_0 with f32
//! activations. The kernel is a matrix-vector product (and small-M matmul): output rows are split
//! across threads (rayon, burn's own pool), each thread streams its weight rows once and
//! multiplies each row into up to four activation rows at a time while it is in registers.
//!
//! Packed weights live on the host and every product with them is computed there, whatever the
//! backend (the activations go to the host and the product comes back): a CPU layout. A GPU
//! backend loads them and runs, but multiplies on the CPU; keep [`WeightDtype::F32`] there.
//!
//! x86_64 with AVX2, FMA and F16C (checked once at run time with `is_x86_feature_detected!`)
//! takes the SIMD path; anything else runs the scalar reference, which computes the same sums
//! in another order.

use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How a model keeps its projection weights in memory (chosen at load).
///
/// Named `WeightDtype` not to clash with burn's `DType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDtype {
    /// burn tensors, the backend's float type (training and every backend; the default).
    #[default]
    F32,
    /// 2 bytes a value, f32's exponent range (rounded to nearest even from f32).
    Bf16,
    /// 2 bytes a value, IEEE half precision.
    F16,
    /// llama.cpp's 8-bit blocks: 32 values, one f16 scale (`amax / 127`), 34 bytes.
    Q8_0,
    /// f32 values, but packed and multiplied by this module's kernel instead of burn's matmul
    /// (the same bytes as `F32`, read faster at decode: docs/model.md). Inference only.
    F32Packed,
}

impl WeightDtype {
    /// Bytes per value in memory (Q8_0: 34 / 32).
    pub fn bytes_per_value(self) -> f64 {
        match self {
            Self::F32 | Self::F32Packed => 4.0,
            Self::Bf16 | Self::F16 => 2.0,
            Self::Q8_0 => 34.0 / 32.0,
        }
    }

    /// The name on the command line (`f32`, `bf16`, `f16`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::F32Packed => "f32_packed",
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "f32_packed" | "f32-packed" => Ok(Self::F32Packed),
            other => Err(ModelError::Unsupported(format!("weight dtype {other:?} (f32, bf16, f16, q8_0, f32_packed)"))),
        }
    }
}

/// Activation rows from which [`PackedMatrix::matmul`] runs a GEMM (prefill) instead of the
/// matrix-vector kernel (decode, speculative and small batches).
pub const GEMM_ROWS: usize = 16;

/// Decode (one activation row) reads a task's weight rows as this many runs at once: the task's
/// rows split into `DECODE_ROWS` contiguous runs, and row `g` of every run multiplied in one
/// kernel call, so each core streams from 4 places in memory, each long and contiguous. One
/// row after another, a core had one stream in flight and read memory at a fraction of its
/// rate (a 2-core VM: f32 decode 10.7 tokens/s, f16 18.0, q8_0 26.9); 4 interleaved runs:
/// 14.7, 28.5, 36.3 (2 runs 13.6, 22.1, 36.2; 6 and 8 runs no better, out of registers). 4
/// neighbouring rows instead of 4 runs helped f32 only (12.4), whose rows span more pages.
const DECODE_ROWS: usize = 4;

/// Weight rows per parallel task of [`PackedMatrix::matmul_gemm`]: 64 rows of 896 f32 values are
/// 224 KiB, of 4,864 values 1.2 MiB (L2-sized); enough tasks for two threads on every projection.
const GEMM_TASK_ROWS: usize = 64;

/// Values per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

/// One Q8_0 block, byte for byte llama.cpp's `block_q8_0`: `d` an f16's bits, then 32 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; Q8_0_BLOCK],
}

impl BlockQ8_0 {
    /// Quantizes 32 values as llama.cpp's `quantize_row_q8_0_ref` (and gguf-py) do: scale
    /// `d = amax / 127`, stored as f16; `q = round(x / d)` (half away from zero) with `1 / d`
    /// in f32 from the unrounded `d`.
    pub fn quantize(x: &[f32]) -> Self {
        debug_assert_eq!(x.len(), Q8_0_BLOCK);
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut qs = [0i8; Q8_0_BLOCK];
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        Self { d: f16::from_f32(d).to_bits(), qs }
    }

    /// The block from llama.cpp's 34 bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut qs = [0i8; Q8_0_BLOCK];
        for (q, &v) in qs.iter_mut().zip(&b[2..2 + Q8_0_BLOCK]) {
            *q = v as i8;
        }
        Self { d: u16::from_le_bytes([b[0], b[1]]), qs }
    }

    /// llama.cpp's 34 bytes.
    pub fn to_bytes(&self) -> [u8; 34] {
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, &q) in b[2..].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
        b
    }

    fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }

    /// The block's 32 values as f32 (`q · d`) into `out`.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let d = self.scale();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// Rounds activations `x` (whole blocks of 32) to the values their Q8_0 blocks hold, as the
/// Q8_0 kernel multiplies them: what llama.cpp's Q8_0 matmul does with its activations, for the
/// prefill path that multiplies dequantized tiles in f32 instead.
pub fn round_through_q8_0(x: &mut [f32]) {
    for chunk in x.chunks_exact_mut(Q8_0_BLOCK) {
        BlockQ8_0::quantize(chunk).dequantize_into(chunk);
    }
}

/// An activation block as the AVX-512 VNNI decode kernel uses it: `vpdpbusd` multiplies unsigned
/// by signed bytes, so the kernel takes the weight's bytes plus 128 (one `vpxor`) as the unsigned
/// side and this block's own bytes as the signed one; each of the 8 lane sums then starts at
/// `-128 ·` the sum of its 4 activation bytes (`start`), and the result is the exact integer dot
/// product. Prepared once per matmul, and reused by every weight row.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct VnniBlock {
    start: [i32; 8],
    d: f32,
}

impl VnniBlock {
    fn new(block: &BlockQ8_0) -> Self {
        let start =
            std::array::from_fn(|l| -128 * block.qs[4 * l..4 * l + 4].iter().map(|&q| i32::from(q)).sum::<i32>());
        Self { start, d: block.scale() }
    }
}

/// Whether the CPU has AVX-512 F, VL and VNNI (with F16C), checked once.
fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::vnni_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The values of a [`PackedMatrix`], row-major `[rows, cols]`.
#[derive(Debug, Clone, PartialEq)]
pub enum PackedData {
    /// f32 values ([`WeightDtype::F32Packed`]).
    F32(Vec<f32>),
    /// bf16 bits.
    Bf16(Vec<u16>),
    /// f16 bits.
    F16(Vec<u16>),
    /// `cols / 32` blocks per row.
    Q8_0(Vec<BlockQ8_0>),
}

/// A weight `[rows = d_out, cols = d_in]` in a compact dtype (row `o` is output `o`'s weights).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: PackedData,
    /// Added to every product row (`[rows]`, f32), when the projection has a bias.
    pub bias: Option<Vec<f32>>,
}

/// `dst = scale · lhs · rhs` for `[m, n, k]` on the calling thread (`gemm::Parallelism::None`),
/// overwriting `dst`: `dst` (`[m, n]`) and `lhs` (`[m, k]`) given by their first element and row
/// stride (column stride 1), `rhs` (`[k, n]`) by its first element, row stride and column stride
/// (a transposed view is a row stride of 1).
///
/// # Safety
/// Every element the shapes and strides address must lie inside its allocation, and no other
/// thread may touch the `dst` elements meanwhile.
pub(crate) unsafe fn gemm_one_thread(
    [m, n, k]: [usize; 3],
    (dst, dst_rs): (*mut f32, isize),
    (lhs, lhs_rs): (*const f32, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    scale: f32,
) {
    // SAFETY: the caller's contract; gemm reads and writes nothing else.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            false,
            lhs,
            1,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn shape_error(what: &str, rows: usize, cols: usize, len: usize) -> ModelError {
    ModelError::Unsupported(format!("{what}: {len} values for a [{rows}, {cols}] matrix"))
}

impl PackedMatrix {
    /// Packs row-major f32 values `[rows, cols]` as `dtype` (`F32` keeps them as they are).
    /// Q8_0 needs `cols` a multiple of 32 (as llama.cpp does).
    pub fn from_f32(values: &[f32], rows: usize, cols: usize, dtype: WeightDtype) -> Result<Self> {
        if values.len() != rows * cols {
            return Err(shape_error("pack", rows, cols, values.len()));
        }
        Self::from_row_fn(rows, cols, dtype, |r, buf| buf.copy_from_slice(&values[r * cols..(r + 1) * cols]))
    }

    /// Packs the transpose of row-major `[d_in, d_out]` values (burn's `Linear` layout) as
    /// `[d_out, d_in]` rows.
    pub fn from_f32_transposed(values: &[f32], d_in: usize, d_out: usize, dtype: WeightDtype) -> Result<Self> {
        if values.len() != d_in * d_out {
            return Err(shape_error("pack", d_in, d_out, values.len()));
        }
        Self::from_row_fn(d_out, d_in, dtype, |r, buf| {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = values[k * d_out + r];
            }
        })
    }

    /// Packs `[rows, cols]` whose row `r` `fill(r, buf)` writes as f32, rows in parallel.
    pub fn from_row_fn(
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Result<Self> {
        if dtype == WeightDtype::Q8_0 && !cols.is_multiple_of(Q8_0_BLOCK) {
            return Err(ModelError::Unsupported(format!(
                "Q8_0 needs rows of a multiple of {Q8_0_BLOCK} values, not {cols}"
            )));
        }
        // Each row as f32 into a per-thread buffer, then converted into its place.
        fn rows_of<T: Send + Copy>(
            rows: usize,
            width: usize,
            cols: usize,
            zero: T,
            fill: &(impl Fn(usize, &mut [f32]) + Sync),
            convert: impl Fn(&[f32], &mut [T]) + Sync,
        ) -> Vec<T> {
            let mut out = vec![zero; rows * width];
            if width > 0 {
                out.par_chunks_mut(width).enumerate().for_each_init(
                    || vec![0.0f32; cols],
                    |buf, (r, o)| {
                        fill(r, buf);
                        convert(buf, o);
                    },
                );
            }
            out
        }
        let data = match dtype {
            WeightDtype::F32 | WeightDtype::F32Packed => {
                PackedData::F32(rows_of(rows, cols, cols, 0.0, &fill, |b, o| o.copy_from_slice(b)))
            }
            WeightDtype::Bf16 => PackedData::Bf16(rows_of(rows, cols, cols, 0, &fill, |b, o| {
                o.iter_mut().zip(b).for_each(|(o, &v)| *o = bf16::from_f32(v).to_bits())
            })),
            WeightDtype::F16 => PackedData::F16(rows_of(rows, cols, cols, 0, &fill, |b, o| {
                o.iter_mut().zip(b).for_each(|(o, &v)| *o = f16::from_f32(v).to_bits())
            })),
            WeightDtype::Q8_0 => {
                let zero = BlockQ8_0 { d: 0, qs: [0; Q8_0_BLOCK] };
                PackedData::Q8_0(rows_of(rows, cols / Q8_0_BLOCK, cols, zero, &fill, |b, o| {
                    o.iter_mut().zip(b.chunks_exact(Q8_0_BLOCK)).for_each(|(o, v)| *o = BlockQ8_0::quantize(v))
                }))
            }
        };
        Ok(Self { rows, cols, data, bias: None })
    }

    /// The matrix from llama.cpp's bytes of a tensor of `dtype` (F16, BF16 or Q8_0 as stored in a
    /// GGUF file, `[rows, cols]` row-major), kept as they are.
    pub fn from_ggml_bytes(bytes: &[u8], rows: usize, cols: usize, dtype: WeightDtype) -> Result<Self> {
        Self::from_ggml_bytes_with(bytes, rows, cols, dtype, |_, _| {})
    }

    /// [`Self::from_ggml_bytes`], calling `done(start, len)` after each ~16 MiB of `bytes` is
    /// copied (a loader releases those pages of its map as it goes, so the tensor is never
    /// resident twice).
    pub fn from_ggml_bytes_with(
        bytes: &[u8],
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        mut done: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let n = rows * cols;
        // (bytes per element, elements expected); Q8_0's element is a 34-byte block.
        let (size, count) = match dtype {
            WeightDtype::Bf16 | WeightDtype::F16 => (2, n),
            WeightDtype::F32 | WeightDtype::F32Packed => (4, n),
            WeightDtype::Q8_0 => {
                if !cols.is_multiple_of(Q8_0_BLOCK) {
                    return Err(shape_error("Q8_0 tensor", rows, cols, bytes.len() / 34 * Q8_0_BLOCK));
                }
                (34, n / Q8_0_BLOCK)
            }
        };
        if bytes.len() != size * count {
            return Err(shape_error(&format!("{dtype} tensor"), rows, cols, bytes.len() / size));
        }
        fn copy<T>(
            bytes: &[u8],
            size: usize,
            count: usize,
            done: &mut impl FnMut(usize, usize),
            f: impl Fn(&[u8]) -> T,
        ) -> Vec<T> {
            let mut out = Vec::with_capacity(count);
            let step = (16 << 20) / size * size;
            for (i, chunk) in bytes.chunks(step).enumerate() {
                out.extend(chunk.chunks_exact(size).map(&f));
                done(i * step, chunk.len());
            }
            out
        }
        let u16_of = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        let data = match dtype {
            WeightDtype::Bf16 => PackedData::Bf16(copy(bytes, size, count, &mut done, u16_of)),
            WeightDtype::F16 => PackedData::F16(copy(bytes, size, count, &mut done, u16_of)),
            WeightDtype::Q8_0 => PackedData::Q8_0(copy(bytes, size, count, &mut done, BlockQ8_0::from_bytes)),
            WeightDtype::F32 | WeightDtype::F32Packed => {
                PackedData::F32(copy(bytes, size, count, &mut done, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            }
        };
        Ok(Self { rows, cols, data, bias: None })
    }

    /// The rows of `parts` one after the other (same dtype and width): q | k | v, or gate | up,
    /// as one matrix, so one pass of the kernel computes all of them. Biases are joined too (a
    /// part without one gets zeros, unless no part has one).
    pub fn concat_rows(parts: Vec<PackedMatrix>) -> Result<Self> {
        let first = parts.first().ok_or_else(|| ModelError::Unsupported("joining no matrices".into()))?;
        let (cols, dtype) = (first.cols, first.dtype());
        if parts.iter().any(|p| p.cols != cols || p.dtype() != dtype) {
            return Err(ModelError::Unsupported("joining matrices of different widths or dtypes".into()));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let bias = parts
            .iter()
            .any(|p| p.bias.is_some())
            .then(|| parts.iter().flat_map(|p| p.bias.clone().unwrap_or_else(|| vec![0.0; p.rows])).collect());
        fn join<T: Clone>(parts: impl Iterator<Item = Vec<T>>) -> Vec<T> {
            let mut out = Vec::new();
            for p in parts {
                out.extend(p);
            }
            out
        }
        let datas = parts.into_iter().map(|p| p.data);
        let data = match dtype {
            WeightDtype::F32 | WeightDtype::F32Packed => {
                PackedData::F32(join(datas.map(|d| if let PackedData::F32(v) = d { v } else { vec![] })))
            }
            WeightDtype::Bf16 => {
                PackedData::Bf16(join(datas.map(|d| if let PackedData::Bf16(v) = d { v } else { vec![] })))
            }
            WeightDtype::F16 => {
                PackedData::F16(join(datas.map(|d| if let PackedData::F16(v) = d { v } else { vec![] })))
            }
            WeightDtype::Q8_0 => {
                PackedData::Q8_0(join(datas.map(|d| if let PackedData::Q8_0(v) = d { v } else { vec![] })))
            }
        };
        Ok(Self { rows, cols, data, bias })
    }

    /// The dtype the values are kept in.
    pub fn dtype(&self) -> WeightDtype {
        match self.data {
            PackedData::F32(_) => WeightDtype::F32Packed,
            PackedData::Bf16(_) => WeightDtype::Bf16,
            PackedData::F16(_) => WeightDtype::F16,
            PackedData::Q8_0(_) => WeightDtype::Q8_0,
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(v) => 4 * v.len(),
            PackedData::Bf16(v) | PackedData::F16(v) => 2 * v.len(),
            PackedData::Q8_0(v) => 34 * v.len(),
        }
    }

    /// Row `r` as f32 into `out` (`cols` values): an embedding lookup of a tied head, a tile of a
    /// prefill. Written to vectorise (f16 through `half`'s F16C-detecting slice conversion).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let c = self.cols;
        match &self.data {
            PackedData::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            PackedData::Bf16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = f32::from_bits(u32::from(b) << 16);
                }
            }
            PackedData::F16(v) => {
                let row: &[f16] = bytemuck_u16_as_f16(&v[r * c..(r + 1) * c]);
                row.convert_to_f32_slice(out);
            }
            PackedData::Q8_0(v) => {
                let per_row = c / Q8_0_BLOCK;
                for (block, o) in v[r * per_row..(r + 1) * per_row].iter().zip(out.chunks_exact_mut(Q8_0_BLOCK)) {
                    block.dequantize_into(o);
                }
            }
        }
    }

    /// Rows `first..` as f32 into `out` (whole rows of `cols` values): a prefill task's tile.
    fn dequantize_rows_into(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row(first + i, row);
        }
    }

    /// Every value as f32, row-major (tests and saving; inference never calls it).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate().take(self.rows) {
            self.dequantize_row(r, row);
        }
        out
    }

    /// `y = x · Wᵀ + bias`: `x` is `[m, cols]` row-major, the result `[m, rows]`. Fewer than
    /// [`GEMM_ROWS`] rows (decode) run this module's kernel; more (prefill) run
    /// [`Self::matmul_gemm`].
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        if m >= GEMM_ROWS {
            self.matmul_gemm(x, m)
        } else {
            self.matmul_with(x, m, simd_available())
        }
    }

    /// [`Self::matmul`] with the `gemm` crate (the matmul burn's Flex backend runs, with its
    /// AVX-512 kernels where the binary turns them on): compute-bound prefill, where a tuned
    /// GEMM's register blocking beats the kernel's dot products. The weight's rows go in tasks
    /// of 64: an f32 weight's are read where they lie, as the transposed view of `[rows, cols]`;
    /// the other dtypes' are dequantized into the task's buffer, then multiplied into their
    /// columns of the result. A Q8_0 weight's activations are rounded through Q8_0 first
    /// ([`round_through_q8_0`]), so the product is the one the kernel (and llama.cpp) computes,
    /// up to summation order; a bf16 weight's through bf16 ([`round_through_bf16`]), as llama.cpp's
    /// bf16 matmul multiplies them.
    pub fn matmul_gemm(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "x must be [m, cols]");
        let (n, k) = (self.rows, self.cols);
        let mut y = vec![0.0f32; m * n];
        if n == 0 || m == 0 {
            return y;
        }
        let round: Option<fn(&mut [f32])> = match self.data {
            PackedData::Q8_0(_) => Some(round_through_q8_0),
            PackedData::Bf16(_) => Some(round_through_bf16),
            _ => None,
        };
        let rounded;
        let x = match round {
            Some(round) => {
                let mut v = x.to_vec();
                v.par_chunks_mut(k.max(1)).for_each(round);
                rounded = v;
                &rounded[..]
            }
            None => x,
        };
        // Tasks of `GEMM_TASK_ROWS` weight rows, each multiplied into its columns of `y` by a
        // one-thread gemm: an f32 weight's rows where they lie, other dtypes dequantized into the
        // task's own buffer (in cache when multiplied). gemm's own threading split the down
        // projection's shape (k = 4864, n = 896) so that two threads ran at one's speed.
        let y_at = y.as_mut_ptr() as usize;
        (0..n).into_par_iter().step_by(GEMM_TASK_ROWS).for_each_init(Vec::new, |buf, first| {
            let t = GEMM_TASK_ROWS.min(n - first);
            let tile: &[f32] = match &self.data {
                PackedData::F32(v) => &v[first * k..(first + t) * k],
                _ => {
                    buf.resize(t * k, 0.0);
                    self.dequantize_rows_into(first, buf);
                    buf
                }
            };
            // SAFETY: `y` is `[m, n]` row-major (row stride n, column stride 1) and the block
            // written, rows 0..m and columns first..first + t, lies inside it and is written by
            // no other task (`y` outlives them all); `x` is `[m, k]` row-major; `tile` holds `t`
            // rows of `k` values, read as the `[k, t]` transposed view (row stride 1, column
            // stride k). gemm reads and writes nothing else.
            unsafe {
                gemm_one_thread(
                    [m, t, k],
                    ((y_at as *mut f32).add(first), n as isize),
                    (x.as_ptr(), k as isize),
                    (tile.as_ptr(), 1, k as isize),
                    1.0,
                )
            }
        });
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        y
    }

    /// [`Self::matmul`] on this module's kernel at any row count: the scalar reference (`simd`
    /// false) or the SIMD kernel when available.
    pub fn matmul_with(&self, x: &[f32], m: usize, simd: bool) -> Vec<f32> {
        self.matmul_kernels(x, m, simd, simd && vnni_available())
    }

    /// [`Self::matmul_with`], Q8_0 with AVX-512 VNNI (`vnni`, which needs `simd` and the CPU's
    /// support) or AVX2 alone: tests run both on a CPU that has VNNI.
    fn matmul_kernels(&self, x: &[f32], m: usize, simd: bool, vnni: bool) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "x must be [m, cols]");
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || m == 0 {
            return vec![0.0; m * rows];
        }
        // Output rows per task: enough work per task to amortise rayon's hand-off (~64 KiB of
        // weights), small enough that both threads get several tasks on the narrow k/v matrices.
        // Decode's tasks are 256 KiB: its runs (`DECODE_ROWS`) are then 64 KiB each (f16 decode
        // 26.4-26.7 tokens/s, against 23.8-24.4 at 128 KiB and 24.1-25.5 at 512 KiB and more).
        let task_bytes = if m == 1 { 262_144 } else { 65_536 };
        let chunk = (task_bytes / (self.bytes() / rows).max(1)).clamp(4, 4096);
        // A Q8_0 weight multiplies activations quantized to Q8_0 blocks too, as llama.cpp does
        // (`quantize_row_q8_0`, then `ggml_vec_dot_q8_0_q8_0`): each block's 32 products are an
        // integer dot product, scaled once. Widening every weight to f32 instead made the kernel
        // compute-bound (~29 G weights/s on 2 cores) below the memory's rate.
        let xq: Vec<BlockQ8_0> = match self.data {
            PackedData::Q8_0(_) => x.chunks_exact(Q8_0_BLOCK).map(BlockQ8_0::quantize).collect(),
            _ => Vec::new(),
        };
        // With AVX-512 VNNI each block also gets what `vpdpbusd` needs (`VnniBlock`).
        let xv: Vec<VnniBlock> = if vnni { xq.iter().map(VnniBlock::new).collect() } else { Vec::new() };
        // `yt` is `[rows, m]`: each task writes its own rows' outputs contiguously.
        let mut yt = vec![0.0f32; rows * m];
        let work = |(ci, out): (usize, &mut [f32])| {
            let first = ci * chunk;
            let n = out.len() / m;
            if m == 1 {
                // Decode: the task's rows as DECODE_ROWS interleaved runs, row `g` of each run
                // computed together (see `DECODE_ROWS`).
                let runs = n / DECODE_ROWS;
                for g in 0..runs {
                    let rows: [usize; DECODE_ROWS] = std::array::from_fn(|j| g + j * runs);
                    let y = self.rows_dot(rows.map(|r| first + r), x, (&xq, &xv), simd);
                    for (r, y) in rows.into_iter().zip(y) {
                        out[r] = y;
                    }
                }
                let left = runs * DECODE_ROWS;
                for (r, y) in out.iter_mut().enumerate().skip(left) {
                    *y = self.rows_dot::<1>([first + r], x, (&xq, &xv), simd)[0];
                }
                return;
            }
            // Activation rows in groups of 4 (then 2, 1): each weight row is read from memory once
            // and multiplied into every activation row of the group while in registers / L1.
            let mut i = 0;
            while i < m {
                let g = if m - i >= 4 {
                    4
                } else if m - i >= 2 {
                    2
                } else {
                    1
                };
                for r in 0..n {
                    let o = &mut out[r * m + i..r * m + i + g];
                    match g {
                        4 => o.copy_from_slice(&self.row_dots::<4>(first + r, x, (&xq, &xv), i, simd)),
                        2 => o.copy_from_slice(&self.row_dots::<2>(first + r, x, (&xq, &xv), i, simd)),
                        _ => o.copy_from_slice(&self.row_dots::<1>(first + r, x, (&xq, &xv), i, simd)),
                    }
                }
                i += g;
            }
        };
        if rows * cols < 32_768 {
            yt.chunks_mut(chunk * m).enumerate().for_each(work);
        } else {
            yt.par_chunks_mut(chunk * m).enumerate().for_each(work);
        }
        let bias = |r: usize| self.bias.as_ref().map_or(0.0, |b| b[r]);
        if m == 1 {
            if let Some(b) = &self.bias {
                yt.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
            return yt;
        }
        let mut y = vec![0.0f32; m * rows];
        for (r, row) in yt.chunks_exact(m).enumerate() {
            let b = bias(r);
            for (i, &v) in row.iter().enumerate() {
                y[i * rows + r] = v + b;
            }
        }
        y
    }

    /// The dot products of weight row `r` with activation rows `i..i + R` of `x` (`[m, cols]`),
    /// or, for a Q8_0 weight, with the same rows of `xq` (`cols / 32` blocks each; `xv` the same
    /// blocks prepared for AVX-512 VNNI, or empty).
    fn row_dots<const R: usize>(
        &self,
        r: usize,
        x: &[f32],
        (xq, xv): (&[BlockQ8_0], &[VnniBlock]),
        i: usize,
        simd: bool,
    ) -> [f32; R] {
        let c = self.cols;
        let x: [&[f32]; R] = std::array::from_fn(|j| &x[(i + j) * c..(i + j + 1) * c]);
        let per_row = c / Q8_0_BLOCK;
        // `xq` is empty for every dtype but Q8_0, whose kernels alone read it.
        let xq: [&[BlockQ8_0]; R] =
            std::array::from_fn(|j| xq.get((i + j) * per_row..(i + j + 1) * per_row).unwrap_or_default());
        let xv: [&[VnniBlock]; R] =
            std::array::from_fn(|j| xv.get((i + j) * per_row..(i + j + 1) * per_row).unwrap_or_default());
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is only true when `simd_available()` found AVX2, FMA and F16C on
            // this CPU; every slice passed has `cols` values (the kernels read no further).
            unsafe {
                return match &self.data {
                    PackedData::F32(v) => x86::dot_f32::<R>(&v[r * c..(r + 1) * c], x),
                    PackedData::Bf16(v) => x86::dot_bf16::<R>(&v[r * c..(r + 1) * c], x),
                    PackedData::F16(v) => x86::dot_f16::<R>(&v[r * c..(r + 1) * c], x),
                    PackedData::Q8_0(v) if !xv[0].is_empty() => {
                        x86::dot_q8_0_vnni::<R>(&v[r * per_row..(r + 1) * per_row], xq, xv)
                    }
                    PackedData::Q8_0(v) => x86::dot_q8_0::<R>(&v[r * per_row..(r + 1) * per_row], xq),
                };
            }
        }
        let _ = simd;
        scalar_dots(self, r, x, xq)
    }

    /// The dot products of weight rows `r[0]`, ..., `r[W - 1]` with the one activation row `x`
    /// (`xq`/`xv` its Q8_0 blocks, as in [`Self::row_dots`]): decode's kernel, `W` rows at once.
    fn rows_dot<const W: usize>(
        &self,
        r: [usize; W],
        x: &[f32],
        (xq, xv): (&[BlockQ8_0], &[VnniBlock]),
        simd: bool,
    ) -> [f32; W] {
        #[cfg(target_arch = "x86_64")]
        if simd {
            let (c, per_row) = (self.cols, self.cols / Q8_0_BLOCK);
            // SAFETY: as in `row_dots`: `simd` only when `simd_available()`; every weight row
            // and `x` hold `cols` values (`per_row` blocks), which is all the kernels read.
            unsafe {
                return match &self.data {
                    PackedData::F32(v) => x86::dot_f32_rows::<W>(std::array::from_fn(|j| &v[r[j] * c..][..c]), x),
                    PackedData::Bf16(v) => x86::dot_bf16_rows::<W>(std::array::from_fn(|j| &v[r[j] * c..][..c]), x),
                    PackedData::F16(v) => x86::dot_f16_rows::<W>(std::array::from_fn(|j| &v[r[j] * c..][..c]), x),
                    PackedData::Q8_0(v) => {
                        let w = std::array::from_fn(|j| &v[r[j] * per_row..][..per_row]);
                        if xv.is_empty() {
                            x86::dot_q8_0_rows::<W>(w, xq)
                        } else {
                            x86::dot_q8_0_vnni_rows::<W>(w, xq, xv)
                        }
                    }
                };
            }
        }
        let _ = (simd, xv);
        std::array::from_fn(|j| scalar_dots::<1>(self, r[j], [x], [xq])[0])
    }
}

/// f16 bits as `half::f16` values (the same 2 bytes: `f16` is `repr(transparent)` over `u16`).
fn bytemuck_u16_as_f16(v: &[u16]) -> &[f16] {
    // SAFETY: `half::f16` is `#[repr(transparent)]` over `u16`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f16>(), v.len()) }
}

/// A module's packed projection weights (`None`: its burn `Linear`s hold the weights), shared
/// between clones of the module. Printed as dtype and shapes only.
#[derive(Clone, Default)]
pub struct Packed(pub Option<std::sync::Arc<[PackedMatrix]>>);

impl Packed {
    /// Packed weights in the module's order (attention: q, k, v, o; MLP: gate, up, down; head).
    pub fn new(weights: Vec<PackedMatrix>) -> Self {
        Self(Some(weights.into()))
    }

    /// The `i`-th packed weight, if the module's weights are packed.
    pub fn get(&self, i: usize) -> Option<&PackedMatrix> {
        self.0.as_ref().and_then(|w| w.get(i))
    }

    /// Bytes the packed weights take.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |w| w.iter().map(PackedMatrix::bytes).sum())
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("None"),
            Some(w) => {
                f.debug_list().entries(w.iter().map(|m| format!("{}[{}, {}]", m.dtype(), m.rows, m.cols))).finish()
            }
        }
    }
}

/// The reference: each product in f32, summed in order, per activation row; for Q8_0 llama.cpp's
/// `ggml_vec_dot_q8_0_q8_0` (each block's integer dot product times both scales) on `xq`.
fn scalar_dots<const R: usize>(w: &PackedMatrix, r: usize, x: [&[f32]; R], xq: [&[BlockQ8_0]; R]) -> [f32; R] {
    let c = w.cols;
    let mut out = [0.0f32; R];
    let dot = |get: &dyn Fn(usize) -> f32| {
        let mut out = [0.0f32; R];
        for k in 0..c {
            let wk = get(k);
            for (o, xi) in out.iter_mut().zip(&x) {
                *o += wk * xi[k];
            }
        }
        out
    };
    match &w.data {
        PackedData::F32(v) => out = dot(&|k| v[r * c + k]),
        PackedData::Bf16(v) => out = dot(&|k| bf16::from_bits(v[r * c + k]).to_f32()),
        PackedData::F16(v) => out = dot(&|k| f16::from_bits(v[r * c + k]).to_f32()),
        PackedData::Q8_0(v) => {
            let per_row = c / Q8_0_BLOCK;
            for (b, block) in v[r * per_row..(r + 1) * per_row].iter().enumerate() {
                let d = block.scale();
                for (o, xi) in out.iter_mut().zip(&xq) {
                    let xb = &xi[b];
                    let s: i32 = block.qs.iter().zip(&xb.qs).map(|(&q, &xv)| i32::from(q) * i32::from(xv)).sum();
                    *o += s as f32 * (d * xb.scale());
                }
            }
        }
    }
    out
}

/// Whether the SIMD kernels run on this CPU (x86_64 with AVX2, FMA and F16C), checked once.
pub fn simd_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Rounds activations `x` to bf16 (to nearest, ties to even) and back: what a bf16 weight's
/// prefill multiplies them as, on every CPU ([`PackedMatrix::matmul`]; llama.cpp does the same
/// with the activations of its bf16 matmuls).
pub fn round_through_bf16(x: &mut [f32]) {
    for v in x {
        *v = bf16::from_f32(*v).to_f32();
    }
}

/// AVX2 + FMA + F16C kernels: 8 f32 lanes. The f32, bf16 and f16 ones widen 8 weights to f32 in a
/// register (bf16: a 16-bit shift; f16: `vcvtph2ps`) and multiply-add them into each activation
/// row's accumulators; Q8_0 multiplies bytes by bytes (`dot_q8_0`).
/// With one activation row (decode) four accumulators per row keep four FMAs in flight (FMA
/// latency 4, so one chain could not keep up with memory); with four rows, one each.
/// With AVX-512 VNNI, Q8_0 decode multiplies bytes with `vpdpbusd` (`dot_q8_0_vnni`).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8_0;

    /// Accumulators per activation row: 4 chains in flight over all rows.
    const fn chains(r: usize) -> usize {
        if r >= 4 {
            1
        } else {
            4 / r
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The shared loop of the 2-byte and f32 types: `load(i)` widens values `i..i + 8`,
    /// `scalar(i)` value `i` (the tail past the last multiple of 8).
    #[inline(always)]
    unsafe fn dot_lanes<const R: usize>(
        n: usize,
        x: [&[f32]; R],
        load: impl Fn(usize) -> __m256,
        scalar: impl Fn(usize) -> f32,
    ) -> [f32; R] {
        let a = chains(R);
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let full = n / 32 * 32;
        let mut i = 0;
        while i < full {
            for v in 0..4 {
                let w = load(i + 8 * v);
                for r in 0..R {
                    let xv = _mm256_loadu_ps(x[r].as_ptr().add(i + 8 * v));
                    acc[r][v % a] = _mm256_fmadd_ps(w, xv, acc[r][v % a]);
                }
            }
            i += 32;
        }
        while i + 8 <= n {
            let w = load(i);
            for r in 0..R {
                let xv = _mm256_loadu_ps(x[r].as_ptr().add(i));
                acc[r][0] = _mm256_fmadd_ps(w, xv, acc[r][0]);
            }
            i += 8;
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            let mut s = acc[r][0];
            for c in acc[r].iter().take(a).skip(1) {
                s = _mm256_add_ps(s, *c);
            }
            out[r] = hsum(s);
        }
        for k in i..n {
            let wk = scalar(k);
            for (o, xr) in out.iter_mut().zip(&x) {
                *o += wk * xr[k];
            }
        }
        out
    }

    /// The loop of the decode kernels: `W` weight rows times one activation row `x`, `load(j, i)`
    /// widening values `i..i + 8` of weight row `j`, `scalar(j, i)` value `i` (the tail). Two
    /// accumulators per row (FMA latency), each `x` vector loaded once for all `W` rows.
    #[inline(always)]
    unsafe fn dot_lanes_rows<const W: usize>(
        x: &[f32],
        load: impl Fn(usize, usize) -> __m256,
        scalar: impl Fn(usize, usize) -> f32,
    ) -> [f32; W] {
        let n = x.len();
        let mut acc = [[_mm256_setzero_ps(); 2]; W];
        let full = n / 16 * 16;
        let mut i = 0;
        while i < full {
            for (v, at) in [i, i + 8].into_iter().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add(at));
                for (j, acc) in acc.iter_mut().enumerate() {
                    acc[v] = _mm256_fmadd_ps(load(j, at), xv, acc[v]);
                }
            }
            i += 16;
        }
        while i + 8 <= n {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            for (j, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm256_fmadd_ps(load(j, i), xv, acc[0]);
            }
            i += 8;
        }
        std::array::from_fn(|j| {
            let mut s = hsum(_mm256_add_ps(acc[j][0], acc[j][1]));
            for (k, xk) in x.iter().enumerate().skip(i) {
                s += scalar(j, k) * xk;
            }
            s
        })
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_rows<const W: usize>(w: [&[f32]; W], x: &[f32]) -> [f32; W] {
        dot_lanes_rows::<W>(x, |j, i| _mm256_loadu_ps(w[j].as_ptr().add(i)), |j, k| w[j][k])
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16_rows<const W: usize>(w: [&[u16]; W], x: &[f32]) -> [f32; W] {
        let load = |j: usize, i: usize| {
            let h = _mm_loadu_si128(w[j].as_ptr().add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        };
        dot_lanes_rows::<W>(x, load, |j, k| f32::from_bits(u32::from(w[j][k]) << 16))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_rows<const W: usize>(w: [&[u16]; W], x: &[f32]) -> [f32; W] {
        let load = |j: usize, i: usize| _mm256_cvtph_ps(_mm_loadu_si128(w[j].as_ptr().add(i) as *const __m128i));
        dot_lanes_rows::<W>(x, load, |j, k| half::f16::from_bits(w[j][k]).to_f32())
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32<const R: usize>(w: &[f32], x: [&[f32]; R]) -> [f32; R] {
        let p = w.as_ptr();
        dot_lanes::<R>(w.len(), x, |i| _mm256_loadu_ps(p.add(i)), |k| w[k])
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16<const R: usize>(w: &[u16], x: [&[f32]; R]) -> [f32; R] {
        let p = w.as_ptr();
        // bf16 is the top half of an f32: zero-extend to 32 bits, shift into place.
        let load = |i: usize| {
            let h = _mm_loadu_si128(p.add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        };
        dot_lanes::<R>(w.len(), x, load, |k| f32::from_bits(u32::from(w[k]) << 16))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16<const R: usize>(w: &[u16], x: [&[f32]; R]) -> [f32; R] {
        let p = w.as_ptr();
        let load = |i: usize| _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i));
        dot_lanes::<R>(w.len(), x, load, |k| half::f16::from_bits(w[k]).to_f32())
    }

    /// One f16's bits as f32 in all 8 lanes (`vpbroadcastw`, `vcvtph2ps`). Not a scalar
    /// conversion: LLVM made `_mm_cvtsi32_si128` a `vpinsrw` into any register it thought free,
    /// once an accumulator of the loop, and every block's conversion then waited for that sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_splat(bits: u16) -> __m256 {
        _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
    }

    /// The loop of the Q8_0 decode kernels: `block(b)` gives, per activation row, block `b`'s
    /// two scales multiplied (8 lanes alike) and its integer dot products as f32 (8 lanes, to be
    /// summed), and each row's sum is kept in `chains(R)` accumulators. Blocks go 4 at a time so
    /// that each accumulator's index is a constant and it stays in a register.
    #[inline(always)]
    unsafe fn q8_0_chains<const R: usize>(n: usize, mut block: impl FnMut(usize) -> [(__m256, __m256); R]) -> [f32; R] {
        let a = chains(R);
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut step = |b: usize, c: usize| {
            for (acc, (d, dot)) in acc.iter_mut().zip(block(b)) {
                acc[c] = _mm256_fmadd_ps(d, dot, acc[c]);
            }
        };
        let full = n / 4 * 4;
        let mut b = 0;
        while b < full {
            for v in 0..4 {
                step(b + v, v % a);
            }
            b += 4;
        }
        for b in full..n {
            step(b, 0);
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            let mut s = acc[r][0];
            for c in acc[r].iter().take(a).skip(1) {
                s = _mm256_add_ps(s, *c);
            }
            out[r] = hsum(s);
        }
        out
    }

    /// llama.cpp's AVX2 `ggml_vec_dot_q8_0_q8_0`: per block, `|w|` (unsigned) times `x` with
    /// `w`'s signs (`vpsignb`), multiplied and added in pairs to i16 (`vpmaddubsw`: at most
    /// 2·128·127, no saturation), then in pairs to i32 (`vpmaddwd` by ones), converted once and
    /// scaled by both blocks' scales in one FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0<const R: usize>(blocks: &[BlockQ8_0], x: [&[BlockQ8_0]; R]) -> [f32; R] {
        let ones = _mm256_set1_epi16(1);
        q8_0_chains::<R>(blocks.len(), |b| {
            let block = &blocks[b];
            let wd = f16_splat(block.d);
            let qw = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
            let aw = _mm256_sign_epi8(qw, qw);
            std::array::from_fn(|r| {
                let xb = &x[r][b];
                let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw)), ones);
                (_mm256_mul_ps(wd, f16_splat(xb.d)), _mm256_cvtepi32_ps(dot))
            })
        })
    }

    /// [`dot_q8_0`] with AVX-512 VNNI: per block one `vpxor` (the weight's bytes plus 128) and one
    /// `vpdpbusd` started at the activation block's `-128 · Σ x` ([`super::VnniBlock`]) give the
    /// exact integer dot products, where AVX2 takes two `vpsignb`, `vpmaddubsw` and `vpmaddwd`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn dot_q8_0_vnni<const R: usize>(
        blocks: &[BlockQ8_0],
        x: [&[BlockQ8_0]; R],
        xv: [&[super::VnniBlock]; R],
    ) -> [f32; R] {
        let flip = _mm256_set1_epi8(-128);
        q8_0_chains::<R>(blocks.len(), |b| {
            let block = &blocks[b];
            let wd = f16_splat(block.d);
            let wu = _mm256_xor_si256(_mm256_loadu_si256(block.qs.as_ptr() as *const __m256i), flip);
            std::array::from_fn(|r| {
                let p = &xv[r][b];
                let qx = _mm256_loadu_si256(x[r][b].qs.as_ptr() as *const __m256i);
                let dot = _mm256_dpbusd_epi32(_mm256_load_si256(p.start.as_ptr() as *const __m256i), wu, qx);
                (_mm256_mul_ps(wd, _mm256_set1_ps(p.d)), _mm256_cvtepi32_ps(dot))
            })
        })
    }

    /// [`dot_q8_0`] for `W` weight rows against one activation row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_rows<const W: usize>(w: [&[BlockQ8_0]; W], x: &[BlockQ8_0]) -> [f32; W] {
        let ones = _mm256_set1_epi16(1);
        q8_0_chains::<W>(x.len(), |b| {
            let xb = &x[b];
            let (xd, qx) = (f16_splat(xb.d), _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i));
            std::array::from_fn(|j| {
                let block = &w[j][b];
                let qw = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
                let dot =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw)), ones);
                (_mm256_mul_ps(f16_splat(block.d), xd), _mm256_cvtepi32_ps(dot))
            })
        })
    }

    /// [`dot_q8_0_vnni`] for `W` weight rows against one activation row.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn dot_q8_0_vnni_rows<const W: usize>(
        w: [&[BlockQ8_0]; W],
        x: &[BlockQ8_0],
        xv: &[super::VnniBlock],
    ) -> [f32; W] {
        let flip = _mm256_set1_epi8(-128);
        q8_0_chains::<W>(x.len(), |b| {
            let p = &xv[b];
            let qx = _mm256_loadu_si256(x[b].qs.as_ptr() as *const __m256i);
            let (start, xd) = (_mm256_load_si256(p.start.as_ptr() as *const __m256i), _mm256_set1_ps(p.d));
            std::array::from_fn(|j| {
                let block = &w[j][b];
                let wu = _mm256_xor_si256(_mm256_loadu_si256(block.qs.as_ptr() as *const __m256i), flip);
                (_mm256_mul_ps(f16_splat(block.d), xd), _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, wu, qx)))
            })
        })
    }

    /// Whether the CPU has AVX-512 F, VL and VNNI, checked once.
    pub fn vnni_available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, varied signs and magnitudes.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// The f64 sum of the dequantized weights times the activations: what both paths approximate
    /// (for a Q8_0 weight, times the activations as the kernel quantizes them).
    fn exact(w: &PackedMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let mut x = x.to_vec();
        if let PackedData::Q8_0(_) = w.data {
            round_through_q8_0(&mut x);
        }
        exact_f32(w, &x, m)
    }

    /// The f64 sum of the dequantized weights times the f32 activations.
    fn exact_f32(w: &PackedMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let wf = w.to_f32();
        let mut y = vec![0.0; m * w.rows];
        for i in 0..m {
            for o in 0..w.rows {
                y[i * w.rows + o] =
                    (0..w.cols).map(|k| f64::from(wf[o * w.cols + k]) * f64::from(x[i * w.cols + k])).sum();
            }
        }
        y
    }

    /// SIMD and scalar paths against the f64 sum of the same dequantized weights, for every dtype,
    /// odd row counts, column counts with tails past the last 8 / 32, and 1 to 7 activation rows
    /// (the groups of 4, 2 and 1; decode's 4 weight rows at once and the rows left over), Q8_0 by
    /// AVX2 alone and with VNNI. Large enough shapes go through the threaded path.
    #[test]
    fn kernels_match_the_reference_on_odd_shapes() {
        for &(rows, cols) in &[(1, 32), (3, 64), (17, 96), (5, 8), (7, 13), (9, 41), (300, 160), (33, 1056)] {
            for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0] {
                if dtype == WeightDtype::Q8_0 && cols % 32 != 0 {
                    assert!(PackedMatrix::from_f32(&values(rows * cols, 1), rows, cols, dtype).is_err());
                    continue;
                }
                let w = PackedMatrix::from_f32(&values(rows * cols, 1), rows, cols, dtype).unwrap();
                for m in 1..=7 {
                    let x = values(m * cols, 2 + m as u32);
                    let want = exact(&w, &x, m);
                    for (simd, vnni) in [(false, false), (true, false), (true, vnni_available())] {
                        let got = w.matmul_kernels(&x, m, simd, vnni);
                        assert_eq!(got.len(), want.len());
                        for (g, e) in got.iter().zip(&want) {
                            // f32 sums of `cols` products of magnitude <= 1.
                            let tol = 1e-6 * cols as f64 + 1e-6 * e.abs();
                            assert!(
                                (f64::from(*g) - e).abs() <= tol,
                                "{dtype} {rows}x{cols} m={m} simd={simd} vnni={vnni}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The prefill path (`matmul` at [`GEMM_ROWS`] rows and more, i.e. `matmul_gemm`) against the
    /// f64 sums of the same weights times the activations as the path rounds them (Q8_0 blocks
    /// for Q8_0, bf16 for bf16): every dtype, with and without a bias, odd shapes, and weights of
    /// one to five tasks of 64 rows (the last one short).
    #[test]
    fn gemm_matches_the_reference() {
        for &(rows, cols, m) in &[(17, 96, GEMM_ROWS), (33, 1056, 37), (300, 8192, 16), (5, 64, 130), (150, 352, 19)] {
            for dtype in [WeightDtype::F32Packed, WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0] {
                let mut w = PackedMatrix::from_f32(&values(rows * cols, 1), rows, cols, dtype).unwrap();
                let x = values(m * cols, 3);
                let mut rounded = x.clone();
                if dtype == WeightDtype::Bf16 {
                    round_through_bf16(&mut rounded);
                }
                for bias in [None, Some(values(rows, 4))] {
                    w.bias = bias.clone();
                    let want = exact(&w, &rounded, m);
                    let got = w.matmul(&x, m);
                    assert_eq!(got.len(), m * rows);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        let e = e + bias.as_ref().map_or(0.0, |b| f64::from(b[i % rows]));
                        let tol = 1e-6 * cols as f64 + 1e-6 * e.abs();
                        assert!((f64::from(*g) - e).abs() <= tol, "{dtype} {rows}x{cols} m={m}: {g} vs {e}");
                    }
                }
            }
        }
    }

    /// Quantizing a Q8_0 matmul's activations moves each activation by at most half a step plus
    /// the f16 rounding of the block's scale (127 steps · 2^-11): the result is within
    /// `Σ |w| · 0.563 · d_x` of the f32-activation sum.
    #[test]
    fn q8_0_activation_rounding_is_bounded() {
        let (rows, cols, m) = (37, 256, 3);
        let w = PackedMatrix::from_f32(&values(rows * cols, 5), rows, cols, WeightDtype::Q8_0).unwrap();
        let wf = w.to_f32();
        let x: Vec<f32> = values(m * cols, 6).iter().enumerate().map(|(k, v)| v * (1.0 + (k % 97) as f32)).collect();
        let xq = PackedMatrix::from_f32(&x, m, cols, WeightDtype::Q8_0).unwrap();
        let PackedData::Q8_0(xb) = &xq.data else { unreachable!() };
        let want = exact_f32(&w, &x, m);
        for simd in [false, true] {
            let got = w.matmul_with(&x, m, simd);
            for i in 0..m {
                for o in 0..rows {
                    let bound: f64 = (0..cols)
                        .map(|k| f64::from(wf[o * cols + k].abs()) * 0.563 * f64::from(xb[(i * cols + k) / 32].scale()))
                        .sum();
                    let (g, e) = (f64::from(got[i * rows + o]), want[i * rows + o]);
                    // Plus the f32 sums' rounding.
                    assert!(
                        (g - e).abs() <= bound + 1e-5 * cols as f64 * (1.0 + e.abs()),
                        "simd={simd} {i},{o}: {g} vs {e}"
                    );
                }
            }
        }
    }

    /// The quantizer keeps every value within half a step of its block's scale, and an all-zero
    /// block gets scale 0.
    #[test]
    fn q8_0_error_is_half_a_step() {
        let mut v = values(256, 9);
        v[..32].fill(0.0);
        let w = PackedMatrix::from_f32(&v, 2, 128, WeightDtype::Q8_0).unwrap();
        let PackedData::Q8_0(blocks) = &w.data else { unreachable!() };
        assert_eq!(blocks[0].d, 0);
        let back = w.to_f32();
        for (b, block) in blocks.iter().enumerate() {
            let step = block.scale();
            for k in 0..32 {
                let (orig, got) = (v[b * 32 + k], back[b * 32 + k]);
                // d is rounded to f16 after the values were divided by the unrounded d.
                assert!((orig - got).abs() <= 0.5 * step + 127.0 * step * 1e-3, "{orig} vs {got}");
            }
        }
        assert_eq!(BlockQ8_0::from_bytes(&blocks[3].to_bytes()), blocks[3]);
    }

    /// Joined matrices compute the parts' products side by side, biases included (a part without
    /// one adds zeros), on both the one-row and the grouped path.
    #[test]
    fn joined_rows_and_biases() {
        for dtype in [WeightDtype::Bf16, WeightDtype::Q8_0] {
            let mut a = PackedMatrix::from_f32(&values(5 * 64, 3), 5, 64, dtype).unwrap();
            let b = PackedMatrix::from_f32(&values(3 * 64, 4), 3, 64, dtype).unwrap();
            a.bias = Some((0..5).map(|i| i as f32).collect());
            let joined = PackedMatrix::concat_rows(vec![a.clone(), b.clone()]).unwrap();
            assert_eq!((joined.rows, joined.cols), (8, 64));
            for m in [1, 3] {
                let x = values(m * 64, 7);
                let (ya, yb, yj) = (a.matmul(&x, m), b.matmul(&x, m), joined.matmul(&x, m));
                let plain = PackedMatrix { bias: None, ..a.clone() }.matmul(&x, m);
                for i in 0..m {
                    assert_eq!(yj[i * 8..i * 8 + 5], ya[i * 5..i * 5 + 5]);
                    assert_eq!(yj[i * 8 + 5..i * 8 + 8], yb[i * 3..i * 3 + 3]);
                    for o in 0..5 {
                        assert_eq!(ya[i * 5 + o], plain[i * 5 + o] + o as f32);
                    }
                }
            }
        }
        let f16 = PackedMatrix::from_f32(&[0.0; 64], 1, 64, WeightDtype::F16).unwrap();
        let q8 = PackedMatrix::from_f32(&[0.0; 64], 1, 64, WeightDtype::Q8_0).unwrap();
        assert!(PackedMatrix::concat_rows(vec![f16, q8]).is_err());
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0, WeightDtype::F32Packed] {
            assert_eq!(d.name().parse::<WeightDtype>().unwrap(), d);
        }
        assert!("int4".parse::<WeightDtype>().is_err());
    }
}
