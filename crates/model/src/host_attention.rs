//! Attention of a CPU prefill, on the host: each query head reads its key/value head's cached
//! keys and values where they lie, in tiles of queries.
//!
//! Burn's attention wants as many key/value heads as query heads, so grouped-query attention
//! copied each key/value head `heads / kv_heads` times (`repeat_kv`), then ran a generic
//! attention over strided views with a boolean mask tensor. Here a task is one query head and
//! [`QUERY_TILE`] of its queries: scores `Q·Kᵀ` by a one-thread gemm over the keys some query
//! of the tile can see (causal: none past the tile's last query; a window: none before the
//! first query's window), a softmax per row over the keys that row can see, then `P·V` by a
//! second gemm written straight into the output's `[batch, queries, heads · head_dim]` layout
//! (the o projection's input; no transpose after). Tasks run on rayon. Visibility is
//! [`hidden`], the rule [`crate::qwen`]'s mask tensors are built from.

use rayon::prelude::*;

use crate::packed::gemm_one_thread;

/// Queries per task: a 64 × keys score tile stays in L2 for prompts of a few thousand tokens,
/// and a 512-token prompt of 14 heads makes 112 tasks for two threads to balance.
const QUERY_TILE: usize = 64;

/// Whether the query at column `query` may NOT see the key at column `key`: keys after it,
/// keys `window` or more columns before it, or padding (columns before `pad`). A padding query
/// sees itself only, so no row of the softmax is empty.
pub(crate) fn hidden(pad: usize, window: usize, query: usize, key: usize) -> bool {
    key > query || query - key >= window || (key < pad && key != query)
}

/// Shapes and columns of one attention call. Columns are the cache's: queries at
/// `offset..offset + queries`, keys at `key_start..key_start + keys`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape<'a> {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub offset: usize,
    pub key_start: usize,
    /// The layer's window (`usize::MAX` for full attention).
    pub window: usize,
    /// Padding columns at the start of each row, if any.
    pub left_pad: Option<&'a [usize]>,
    /// The factor on `Q·Kᵀ` (`1 / √head_dim`).
    pub scale: f32,
}

/// `softmax(scale · Q·Kᵀ + mask) · V` with `q: [batch, queries, heads, head_dim]` and
/// `k`, `v: [batch, kv_heads, keys, head_dim]` (row-major), each key/value head serving
/// `heads / kv_heads` consecutive query heads. Returns `[batch, queries, heads · head_dim]`.
pub(crate) fn attention(s: &Shape<'_>, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let (nh, nkv, hd) = (s.heads, s.kv_heads, s.head_dim);
    assert!(nkv > 0 && nh % nkv == 0, "heads must be a multiple of kv_heads");
    assert_eq!(q.len(), s.batch * s.queries * nh * hd, "q must be [batch, queries, heads, head_dim]");
    assert_eq!(k.len(), s.batch * nkv * s.keys * hd, "k must be [batch, kv_heads, keys, head_dim]");
    assert_eq!(v.len(), k.len(), "v must be shaped as k");
    assert!(
        s.key_start <= s.offset && s.offset + s.queries <= s.key_start + s.keys,
        "every query's own key must be among the keys"
    );
    let mut out = vec![0.0f32; q.len()];
    if out.is_empty() {
        return out;
    }
    let groups = nh / nkv;
    let row_stride = nh * hd;
    let tiles = s.queries.div_ceil(QUERY_TILE);
    let out_at = out.as_mut_ptr() as usize;
    (0..s.batch * nh * tiles).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
        let (r, h, tile) = (task / (nh * tiles), task / tiles % nh, task % tiles);
        let first = tile * QUERY_TILE;
        let t = QUERY_TILE.min(s.queries - first);
        let pad = s.left_pad.map_or(0, |p| p[r]);
        // The keys some query of the tile can see: from the first query's window to the last
        // query itself (a padding query's own key lies in that range too).
        let (q_first, q_last) = (s.offset + first, s.offset + first + t - 1);
        let lo = q_first.saturating_sub(s.window.saturating_sub(1)).max(s.key_start);
        let l = q_last + 1 - lo;
        scores.resize(t * l, 0.0);
        let q_at = ((r * s.queries + first) * nh + h) * hd;
        let kv_at = ((r * nkv + h / groups) * s.keys + (lo - s.key_start)) * hd;
        // SAFETY: scores is `[t, l]` row-major; the query rows are `t` rows of `hd` values at
        // stride `row_stride` from `q_at`, inside `q` (row `first + t - 1 < queries`); the keys
        // `[l, hd]` from `kv_at` lie inside this key/value head's `keys` rows (`lo - key_start + l
        // = q_last + 1 - key_start <= keys`), read as the `[hd, l]` transposed view.
        unsafe {
            gemm_one_thread(
                [t, l, hd],
                (scores.as_mut_ptr(), l as isize),
                (q.as_ptr().add(q_at), row_stride as isize),
                (k.as_ptr().add(kv_at), 1, hd as isize),
                s.scale,
            )
        }
        for (i, row) in scores.chunks_exact_mut(l).enumerate() {
            let query = q_first + i;
            let mut max = f32::NEG_INFINITY;
            for (c, x) in row.iter_mut().enumerate() {
                if hidden(pad, s.window, query, lo + c) {
                    *x = f32::NEG_INFINITY;
                } else {
                    max = max.max(*x);
                }
            }
            let mut sum = 0.0f32;
            for x in row.iter_mut() {
                // exp(-inf) = 0: hidden keys weigh nothing in `P·V`.
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        // SAFETY: the output block, rows `first..first + t` of row stride `row_stride`, columns
        // `h·hd..(h + 1)·hd`, lies inside `out` and belongs to this task alone (one task per row,
        // head and tile); `out` outlives the tasks. The values `[l, hd]` from `kv_at` lie inside
        // `v` as the keys lie inside `k`.
        unsafe {
            gemm_one_thread(
                [t, hd, l],
                ((out_at as *mut f32).add(q_at), row_stride as isize),
                (scores.as_ptr(), l as isize),
                (v.as_ptr().add(kv_at), hd as isize, 1),
                1.0,
            )
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in f64, one query at a time, every key tested with [`hidden`].
    fn reference(s: &Shape<'_>, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let (nh, hd) = (s.heads, s.head_dim);
        let groups = nh / s.kv_heads;
        let mut out = vec![0.0; q.len()];
        for r in 0..s.batch {
            let pad = s.left_pad.map_or(0, |p| p[r]);
            for i in 0..s.queries {
                for h in 0..nh {
                    let qrow = &q[((r * s.queries + i) * nh + h) * hd..][..hd];
                    let head = (r * s.kv_heads + h / groups) * s.keys;
                    let visible: Vec<usize> =
                        (0..s.keys).filter(|&c| !hidden(pad, s.window, s.offset + i, s.key_start + c)).collect();
                    let logits: Vec<f64> = visible
                        .iter()
                        .map(|&c| {
                            let krow = &k[(head + c) * hd..][..hd];
                            s.scale as f64 * qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    let o = &mut out[((r * s.queries + i) * nh + h) * hd..][..hd];
                    for (&c, w) in visible.iter().zip(&weights) {
                        for (o, &x) in o.iter_mut().zip(&v[(head + c) * hd..][..hd]) {
                            *o += w / sum * x as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// Deterministic values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn check(s: Shape<'_>) {
        let q = values(s.batch * s.queries * s.heads * s.head_dim, 1);
        let k = values(s.batch * s.kv_heads * s.keys * s.head_dim, 2);
        let v = values(k.len(), 3);
        let got = attention(&s, &q, &k, &v);
        let want = reference(&s, &q, &k, &v);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-5, "{s:?}: element {i}: {g} vs {w}");
        }
    }

    fn shape(queries: usize, keys: usize, offset: usize, key_start: usize) -> Shape<'static> {
        Shape {
            batch: 1,
            queries,
            keys,
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
            offset,
            key_start,
            window: usize::MAX,
            left_pad: None,
            scale: 1.0 / 8f32.sqrt(),
        }
    }

    #[test]
    fn causal_prefill_over_several_tiles() {
        check(shape(150, 150, 0, 0));
    }

    #[test]
    fn chunked_prefill_after_cached_keys() {
        // 70 queries after 40 cached columns, and one decode step.
        check(shape(70, 110, 40, 0));
        check(shape(1, 111, 110, 0));
    }

    #[test]
    fn window_left_padding_and_a_windowed_cache() {
        let pad = [0, 5, 90];
        check(Shape { batch: 3, window: 7, left_pad: Some(&pad), ..shape(100, 100, 0, 0) });
        // A windowed layer's cache holds the last keys only, the first at column 30.
        check(Shape { window: 16, ..shape(20, 35, 45, 30) });
        // One key/value head for all query heads (multi-query), and none shared (multi-head).
        check(Shape { kv_heads: 1, ..shape(65, 65, 0, 0) });
        check(Shape { kv_heads: 6, ..shape(65, 65, 0, 0) });
    }
}
