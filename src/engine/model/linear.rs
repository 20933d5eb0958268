//! A projection: `x @ W^T (+ b)` over quantized (GGUF) or dense (safetensors) weights behind
//! candle's `QMatMul`, or, on a CPU, bf16/f16 safetensors matrices as stored, which take wick's
//! half kernel (`kernels/half.rs`) for every call: it gives a row the same bits in any call, and
//! beat candle's f32 GEMM over the widened weights at every row count measured.
//!
//! On the CPU the kernel is chosen per matrix (see BENCHMARKS.md, `cargo bench --bench kernels`).
//! Q4_K, Q6_K, Q4_0, Q4_1 and Q5_0 matrices take wick's own kernels (`kernels/`) in calls of
//! fewer than [`GEMM_ROWS`] rows, decode rows and prompt chunks alike: they read the blocks as
//! stored, on AVX2 or AVX-512 VNNI. Q8_0 matrices without a fast candle kernel take them for a lone
//! row, and wick's Q8_0 tiles (the same bits) for 2 to 255 rows.
//! Where candle's fast x86 kernels apply (AVX-512 VNNI; Q4_K, Q6_K and Q8_0 with an inner
//! dimension that is a multiple of 256) they beat dequantizing for a GEMM at every prompt length.
//! Where neither does, candle's kernel takes rows one by one, so decode calls of [`GEMM_ROWS`] or
//! more rows, and prompt chunks, multiply by the dequantized f32 weights with candle's GEMM, which
//! reuses each weight across the rows.
//!
//! Zero-padding other Q8_0 matrices to a multiple of 256 would make them 2.7–4.6 times faster, but
//! those kernels round the activations in blocks of 256 rather than 32: SmolLM2's greedy text then
//! parted from the same weights in f32 within eight tokens, so wick keeps the finer kernel.
//!
//! # Batch and chunk invariance
//! A forward pass carries the rows of many sequences, and a sequence's tokens must not depend on
//! its neighbours, nor on how its prompt was cut into chunks (a prompt whose prefix comes from the
//! cache computes only its tail). candle's kernels give a row the same bits whatever other rows
//! share the call, except where the kernel itself changes with the number of rows: the GEMM above
//! (and candle's AMX tiles for Q4_K) from 32 rows, candle's one-row Q6_K kernel, and the dense
//! GEMM, whose blocking follows the shape. So on the CPU prompt chunks ([`Span::prompt`]) never
//! take the dequantized GEMM where a decode kernel applies: they go in pieces of fewer than
//! [`GEMM_ROWS`] rows (255 on wick's Q8_0 tiles) through the decode kernels, which give a row the
//! same bits in any call. Matrices only candle's generic kernel takes (Q5_K, say) multiply prompt
//! chunks by their dequantized weights at any length, padded to [`PROMPT_ROWS`] rows, as dense
//! weights do. Decode rows share calls of fewer than [`GEMM_ROWS`] rows; a lone row on a Q6_K fast
//! matrix is padded to two; dense weights go one segment at a time. On a GPU every row shares one
//! call: cuBLAS picks its algorithm by shape, so there a near-tie may break differently in a
//! different batch.

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, Device, Module, Tensor};

use super::kernels::half::HalfMatrix;
use super::kernels::{self, q8_0};
use crate::error::Result;

/// From this many rows on, a CPU matmul without a fast kernel dequantizes and runs a GEMM:
/// dequantizing costs about what 18 rows through the slow kernel save (SmolLM2, 2 cores).
/// Calls shorter than this keep the same kernel whatever their length.
const GEMM_ROWS: usize = 32;

/// Below this many rows, Q8_0 matrices without a fast candle kernel use wick's own (faster than
/// dequantizing for a GEMM up to about 256 rows: `cargo bench --bench kernels`).
const Q8_0_GEMM_ROWS: usize = 256;

/// Prompt chunks that go through candle's GEMM are padded to at least this many rows: the `gemm`
/// crate blocks small products another way, so a short chunk's rows would get other bits than the
/// same rows in a long chunk. From 65 rows up a row's bits do not depend on the row count
/// (`tests::a_row_gets_the_same_bits_in_any_chunk`).
const PROMPT_ROWS: usize = 65;

/// The inner-dimension multiple candle's fast x86 kernels need.
const FAST_K: usize = 256;

/// One segment's rows of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub rows: usize,
    /// A prompt chunk, which takes the prompt kernels at any length (see the module docs);
    /// otherwise decode rows (a sequence's next token, or tokens it generated, fed again).
    pub prompt: bool,
}

impl Span {
    pub fn decode(rows: usize) -> Self {
        Self {
            rows,
            prompt: false,
        }
    }
}

pub(crate) struct Linear {
    weight: Weight,
    /// The quantized weights, for the GEMM path of long CPU chunks; `None` where the quantized
    /// kernel is used at every length (or the weights are dense).
    gemm: Option<Arc<QTensor>>,
    bias: Option<Tensor>,
    /// Rows are grouped into calls by segment (see the module docs); false on a GPU.
    per_segment: bool,
    /// A Q6_K matrix with a fast kernel: one row alone would take another kernel than two.
    pad_single: bool,
    /// A Q8_0 matrix without a fast kernel, on a CPU that runs wick's Q8_0 tiles for several
    /// rows (see `q8_0.rs`).
    q8_0: Option<Arc<QTensor>>,
    /// The SIMD level of wick's decode-row kernels, where they take the matrix (in `matmul`) on
    /// this CPU, for calls of fewer than [`GEMM_ROWS`] rows.
    own: Option<kernels::Level>,
    /// Whose threads wick's kernels run on (see [`kernels::Threads`]).
    threads: kernels::Threads,
}

/// A projection's matrix: behind candle's `QMatMul` (GGUF blocks, or dense), or bf16/f16 as a
/// safetensors file stores it, on wick's half kernel (`kernels::half`, CPU only).
enum Weight {
    Candle(QMatMul),
    Half(Arc<HalfMatrix>, kernels::Level),
}

impl Linear {
    pub fn quantized(weight: QTensor, bias: Option<Tensor>, device: &Device) -> Result<Self> {
        let fast = device.is_cpu() && fast_kernels() && has_fast_kernel(&weight);
        if device.is_cpu() {
            kernels::prefer_huge_pages(&weight.data()?);
        }
        let level = kernels::Level::best().filter(|_| device.is_cpu());
        // candle's fast Q8_0 kernel reads about the bytes wick's does, and gives other bits.
        let own = level.filter(|_| {
            kernels::family(&weight).is_some() && !(fast && weight.dtype() == GgmlDType::Q8_0)
        });
        let pad_single = fast && weight.dtype() == GgmlDType::Q6K && own.is_none();
        let weight = Arc::new(weight);
        let matmul = QMatMul::from_arc(weight.clone())?;
        let slow = device.is_cpu() && !fast && matches!(matmul, QMatMul::QTensor(_));
        let q8_0 = (slow && q8_0::available() && q8_0::applies(&weight)).then(|| weight.clone());
        Ok(Self {
            weight: Weight::Candle(matmul),
            gemm: slow.then_some(weight),
            bias,
            per_segment: device.is_cpu(),
            pad_single,
            q8_0,
            own,
            threads: kernels::Threads::Wick,
        })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            per_segment: weight.device().is_cpu(),
            weight: Weight::Candle(QMatMul::Tensor(weight)),
            gemm: None,
            bias,
            pad_single: false,
            q8_0: None,
            own: None,
            threads: kernels::Threads::Wick,
        }
    }

    /// A bf16/f16 matrix kept as stored, on the CPU at `level` (see `kernels::half`).
    pub fn half(weight: HalfMatrix, bias: Option<Tensor>, level: kernels::Level) -> Self {
        kernels::prefer_huge_pages(weight.as_bytes());
        Self {
            weight: Weight::Half(Arc::new(weight), level),
            gemm: None,
            bias,
            per_segment: true,
            pad_single: false,
            q8_0: None,
            own: None,
            threads: kernels::Threads::Wick,
        }
    }

    /// Whether a decode row through this projection runs on wick's own kernels (or it has no
    /// quantized matrix and so no candle kernel either).
    pub fn on_wicks_kernels(&self) -> bool {
        self.own.is_some() || !matches!(self.weight, Weight::Candle(QMatMul::QTensor(_)))
    }

    /// Whether the weights are dense on candle's GEMM (which takes a lone row another way than
    /// several).
    pub fn is_dense(&self) -> bool {
        matches!(
            self.weight,
            Weight::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_))
        )
    }

    /// Runs wick's kernels on candle's threads, for a model whose other matrices take candle's
    /// kernels.
    pub fn share_candles_threads(&mut self) {
        self.threads = kernels::Threads::Candle;
    }

    /// The bytes of the matrix a multiplication reads (as stored, or dense).
    pub fn bytes(&self) -> usize {
        match &self.weight {
            Weight::Candle(QMatMul::QTensor(weight)) => weight.storage_size_in_bytes(),
            Weight::Candle(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            Weight::Half(weight, _) => weight.bytes(),
        }
    }

    /// The quantized matrix, where the projection keeps one (a tied embedding table reads it).
    pub fn quantized_weight(&self) -> Option<&Arc<QTensor>> {
        match &self.weight {
            Weight::Candle(QMatMul::QTensor(weight)) => Some(weight),
            _ => None,
        }
    }

    /// The bf16/f16 matrix, where the projection keeps one (a tied embedding table reads it).
    pub fn half_weight(&self) -> Option<&Arc<HalfMatrix>> {
        match &self.weight {
            Weight::Half(weight, _) => Some(weight),
            _ => None,
        }
    }

    /// `x` is `(rows, in)`, the rows of `spans` in order; the result `(rows, out)`.
    pub fn forward(&self, x: &Tensor, spans: &[Span]) -> Result<Tensor> {
        let [y] = Self::forward_many([self], x, spans)?;
        Ok(y)
    }

    /// Several projections of the same input (q/k/v, gate/up). Where candle's fast x86 kernels,
    /// or wick's Q8_0 kernel, take them all, one fused call quantizes the input once and runs one
    /// parallel region, which is most of a small model's decode step; otherwise one call each.
    pub fn forward_many<const N: usize>(
        linears: [&Linear; N],
        x: &Tensor,
        spans: &[Span],
    ) -> Result<[Tensor; N]> {
        let mut parts: [Vec<Tensor>; N] = std::array::from_fn(|_| Vec::new());
        // Dequantized weights, made at most once per pass for the GEMM path.
        let mut dense: [Option<Tensor>; N] = std::array::from_fn(|_| None);
        let calls = linears[0].calls(spans);
        for &(ref range, prompt) in &calls {
            let x = match calls.len() {
                1 => x.clone(),
                _ => x.narrow(0, range.start, range.len())?,
            };
            let rows = range.len();
            // A lone row takes another kernel than two on candle's fast Q6_K matrices; a dense
            // prompt row must get the bits it gets in a longer chunk (see [`PROMPT_ROWS`]).
            let padded = match prompt && linears.iter().any(|l| l.is_dense()) {
                true => rows.max(PROMPT_ROWS),
                false if rows == 1 && linears.iter().any(|l| l.pad_single) => 2,
                false => rows,
            };
            let input = match padded - rows {
                0 => x,
                pad => Tensor::cat(
                    &[&x, &Tensor::zeros((pad, x.dim(1)?), x.dtype(), x.device())?],
                    0,
                )?,
            };
            let fused = match Self::own_rows(&linears, &input)? {
                Some(outputs) => Some(outputs),
                None if let Some(outputs) = Self::half_rows(&linears, &input)? => Some(outputs),
                None if N > 1 => Self::fused(&linears, &input)?,
                None => None,
            };
            let outputs = match fused {
                Some(outputs) => outputs,
                None => match Self::q8_0_rows(&linears, &input)? {
                    Some(outputs) => outputs,
                    // One call each (wick's kernels still take those they can).
                    None => linears
                        .iter()
                        .zip(dense.iter_mut())
                        .map(|(l, dense)| match Self::own_rows(&[l], &input)? {
                            Some(mut y) => Ok(y.remove(0)),
                            None => l.call(&input, dense, prompt),
                        })
                        .collect::<Result<_>>()?,
                },
            };
            for (part, y) in parts.iter_mut().zip(outputs) {
                part.push(match padded == rows {
                    true => y,
                    false => y.narrow(0, 0, rows)?,
                });
            }
        }
        let outputs = parts
            .into_iter()
            .map(|mut part| match part.len() {
                1 => Ok(part.remove(0)),
                _ => Ok(Tensor::cat(&part, 0)?),
            })
            .collect::<Result<Vec<_>>>()?;
        outputs.try_into().map_err(|outputs: Vec<Tensor>| {
            candle_core::Error::Msg(format!("{N} projections gave {} outputs", outputs.len()))
                .into()
        })
    }

    /// The row ranges that go through one kernel call each, and whether each is a prompt chunk
    /// (see the module docs).
    fn calls(&self, spans: &[Span]) -> Vec<(Range<usize>, bool)> {
        let total: usize = spans.iter().map(|s| s.rows).sum();
        if !self.per_segment {
            return vec![(0..total, false)];
        }
        let dense = self.is_dense();
        // Prompt chunks go in pieces short enough for the decode kernels (never a GEMM); the
        // half kernel takes any number of rows.
        let piece = match self.q8_0 {
            _ if dense || matches!(self.weight, Weight::Half(..)) => usize::MAX,
            Some(_) => Q8_0_GEMM_ROWS - 1,
            None => GEMM_ROWS - 1,
        };
        let mut calls = Vec::new();
        let mut shared: Option<Range<usize>> = None;
        let mut start = 0;
        for span in spans {
            let range = start..start + span.rows;
            start += span.rows;
            if span.prompt {
                calls.extend(shared.take().map(|run| (run, false)));
                let pieces = range.clone().step_by(piece.max(1));
                calls.extend(pieces.map(|at| (at..at.saturating_add(piece).min(range.end), true)));
                continue;
            }
            if dense || span.rows >= GEMM_ROWS {
                calls.extend(shared.take().map(|run| (run, false)));
                calls.push((range, false));
                continue;
            }
            match &mut shared {
                Some(run) if run.len() + span.rows < GEMM_ROWS => run.end = range.end,
                _ => {
                    calls.extend(shared.take().map(|run| (run, false)));
                    shared = Some(range);
                }
            }
        }
        calls.extend(shared.map(|run| (run, false)));
        calls
    }

    /// One kernel call over `x`, `(rows, in)`; `dense` keeps the dequantized weights of the
    /// GEMM path for the pass's next call. A prompt chunk on a matrix only candle's generic
    /// kernel takes goes through the GEMM at any length, padded to [`PROMPT_ROWS`] rows.
    fn call(&self, x: &Tensor, dense: &mut Option<Tensor>, prompt: bool) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let gemm_rows = match self.q8_0 {
            Some(_) => Q8_0_GEMM_ROWS,
            None => GEMM_ROWS,
        };
        let y = match &self.gemm {
            Some(weight) if prompt || rows >= gemm_rows => {
                let w = match dense {
                    Some(w) => w,
                    None => dense.insert(weight.dequantize(x.device())?),
                };
                let padded = match prompt && rows < PROMPT_ROWS {
                    true => Tensor::cat(
                        &[
                            x,
                            &Tensor::zeros((PROMPT_ROWS - rows, x.dim(1)?), x.dtype(), x.device())?,
                        ],
                        0,
                    )?,
                    false => x.clone(),
                };
                padded.matmul(&w.t()?)?.narrow(0, 0, rows)?
            }
            _ => match &self.weight {
                Weight::Candle(matmul) => matmul.forward(x)?,
                // The half kernel adds the bias itself.
                Weight::Half(..) => {
                    let y = Self::half_rows(&[self], x)?.and_then(|mut y| y.pop());
                    return y.ok_or_else(|| {
                        candle_core::Error::Msg("half kernel: no output".into()).into()
                    });
                }
            },
        };
        self.add_bias(y)
    }

    /// wick's half kernel over `x`, `(rows, in)`, where every projection is a bf16/f16 matrix.
    fn half_rows(linears: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let rows = x.dim(0)?;
        let weights: Option<Vec<&HalfMatrix>> = linears
            .iter()
            .map(|l| l.half_weight().map(Arc::as_ref))
            .collect();
        match (weights, &linears[0].weight) {
            (Some(weights), Weight::Half(_, level)) => Self::own_kernel(linears, x, |x| {
                kernels::half::matmul(&weights, x, rows, *level, linears[0].threads)
            }),
            _ => Ok(None),
        }
    }

    /// wick's Q8_0 tiles over `x`, `(rows, in)`, for 2 to [`Q8_0_GEMM_ROWS`] decode rows when
    /// every projection has them (a lone row takes the decode-row kernels, which give the same
    /// bits).
    fn q8_0_rows(linears: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let rows = x.dim(0)?;
        let weights: Option<Vec<&QTensor>> = linears.iter().map(|l| l.q8_0.as_deref()).collect();
        match weights.filter(|_| (2..Q8_0_GEMM_ROWS).contains(&rows)) {
            Some(weights) => Self::own_kernel(linears, x, |x| {
                q8_0::matmul(&weights, x, rows, linears[0].threads)
            }),
            None => Ok(None),
        }
    }

    /// wick's decode-row kernels over `x`, `(rows, in)`, for fewer than [`GEMM_ROWS`] rows when
    /// they take every projection and the projections' types share one quantization of `x`
    /// (Q4_K with Q6_K; the 32-value types together). Q8_0 takes them for a lone row only where
    /// `q8_0.rs`'s tiles run: more rows go to those, which give the same bits and share each
    /// weight block among four rows (`cargo bench --bench kernels`).
    fn own_rows(linears: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let rows = x.dim(0)?;
        let weights: Option<Vec<&QTensor>> = linears
            .iter()
            .map(|l| l.own.and(l.quantized_weight()).map(Arc::as_ref))
            .collect();
        // A Q8_0 matrix without the tiles (no AVX-512 VNNI) takes these for every call, as the
        // other 32-value types do (a prompt piece on the GEMM would get other bits).
        let tiles = linears.iter().any(|l| l.q8_0.is_some());
        let takes = |_: &Vec<&QTensor>| rows < GEMM_ROWS && (rows == 1 || !tiles);
        let Some(weights) = weights.filter(takes) else {
            return Ok(None);
        };
        let family = kernels::family(weights[0]);
        match linears[0].own {
            Some(level) if weights.iter().all(|w| kernels::family(w) == family) => {
                Self::own_kernel(linears, x, |x| {
                    kernels::matmul(&weights, x, rows, level, linears[0].threads)
                })
            }
            _ => Ok(None),
        }
    }

    /// One of wick's kernels over `x`'s values, `(rows, in)` row-major, into one tensor (with
    /// its bias) per projection.
    fn own_kernel(
        linears: &[&Linear],
        x: &Tensor,
        kernel: impl FnOnce(&[f32]) -> Result<Vec<Vec<f32>>>,
    ) -> Result<Option<Vec<Tensor>>> {
        let rows = x.dim(0)?;
        let outputs = kernel(&x.flatten_all()?.to_vec1::<f32>()?)?;
        let outputs = linears.iter().zip(outputs).map(|(l, y)| {
            let n = y.len() / rows;
            l.add_bias(Tensor::from_vec(y, (rows, n), x.device())?)
        });
        Ok(Some(outputs.collect::<Result<_>>()?))
    }

    fn fused(linears: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let weights: Option<Vec<&QTensor>> = linears
            .iter()
            .map(|l| l.quantized_weight().map(Arc::as_ref))
            .collect();
        let Some(weights) = weights.filter(|_| x.device().is_cpu()) else {
            return Ok(None);
        };
        let input = x.contiguous()?;
        let Some(outputs) = QTensor::gemv_fused_shared_lhs(&weights, &input)? else {
            return Ok(None);
        };
        let outputs = linears.iter().zip(outputs).map(|(l, y)| l.add_bias(y));
        Ok(Some(outputs.collect::<Result<_>>()?))
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}

/// Whether candle picks its fast x86 kernels on this CPU (AVX-512 with VNNI).
fn fast_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// candle's own rule for its fast kernels (`repack_x86::select`), for prompt chunks.
fn has_fast_kernel(weight: &QTensor) -> bool {
    let Ok((n, k)) = weight.shape().dims2() else {
        return false;
    };
    k.is_multiple_of(FAST_K)
        && n.is_multiple_of(16)
        && matches!(
            weight.dtype(),
            GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q8_0
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_projections_equal_separate_ones_and_stay_close_to_f32() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 512), &device).unwrap();
        let largest = |t: Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
        // Fast-kernel and generic shapes, quantized formats with and without a fast kernel.
        for (n, dtype) in [
            (48, GgmlDType::Q8_0),
            (64, GgmlDType::Q4K),
            (40, GgmlDType::Q4_0),
        ] {
            let w = Tensor::randn(0f32, 0.02, (n, 512), &device).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let exact = x
                .matmul(&q.dequantize(&device).unwrap().t().unwrap())
                .unwrap();
            let linear = Linear::quantized(q, None, &device).unwrap();
            let y = linear.forward(&x, &[Span::decode(3)]).unwrap();
            assert_eq!(y.dims(), &[3, n]);
            // The kernels round the activations to 8 bits: close to the f32 product.
            let error = largest((&y - &exact).unwrap()).unwrap();
            let scale = largest(exact).unwrap();
            assert!(
                error < 0.02 * scale,
                "{dtype:?}: error {error} at scale {scale}"
            );
            let [a, b] = Linear::forward_many([&linear, &linear], &x, &[Span::decode(3)]).unwrap();
            let diff = largest((&a - &y).unwrap()).unwrap();
            assert!(
                diff <= 1e-5 * scale,
                "{dtype:?}: fused and separate differ by {diff}"
            );
            assert_eq!(
                a.to_vec2::<f32>().unwrap(),
                b.to_vec2::<f32>().unwrap(),
                "{dtype:?}"
            );
        }
    }

    fn test_linears(device: &Device) -> Vec<(String, usize, Linear)> {
        let cases: Vec<(usize, usize, Option<GgmlDType>)> = vec![
            (64, 512, Some(GgmlDType::Q8_0)),
            (64, 512, Some(GgmlDType::Q4K)),
            (64, 512, Some(GgmlDType::Q6K)),
            (64, 576, Some(GgmlDType::Q8_0)),
            (64, 576, Some(GgmlDType::Q4_0)),
            (96, 576, None),
        ];
        cases
            .into_iter()
            .map(|(n, k, dtype)| {
                let w = Tensor::randn(0f32, 0.02, (n, k), device).unwrap();
                let linear = match dtype {
                    Some(dtype) => {
                        Linear::quantized(QTensor::quantize(&w, dtype).unwrap(), None, device)
                            .unwrap()
                    }
                    None => Linear::dense(w, None),
                };
                (format!("{dtype:?} {n}x{k}"), k, linear)
            })
            .chain(kernels::Level::best().map(|level| {
                let w = Tensor::randn(0f32, 0.02, (48, 576), device).unwrap();
                let half = kernels::half::Half::Bf16;
                let w = HalfMatrix::from_tensor(half, &w).unwrap().unwrap();
                ("bf16 48x576".to_string(), 576, Linear::half(w, None, level))
            }))
            .collect()
    }

    /// A segment's rows come out bit for bit the same whatever segments share the pass: alone,
    /// beside many decode rows, beside a prompt chunk.
    #[test]
    fn a_segment_gets_the_same_bits_in_any_batch() {
        let device = Device::Cpu;
        let (d, p) = (Span::decode, |rows| Span { rows, prompt: true });
        let batches: [Vec<Span>; 5] = [
            vec![d(1); 40],
            vec![d(1), d(1), p(40)],
            vec![p(40), d(1), d(1)],
            vec![p(3), d(1), d(1), d(5)],
            vec![d(1), p(33)],
        ];
        for (name, k, linear) in test_linears(&device) {
            let x = Tensor::randn(0f32, 1.0, (80, k), &device).unwrap();
            for spans in &batches {
                let total: usize = spans.iter().map(|s| s.rows).sum();
                let batched = linear
                    .forward(&x.narrow(0, 0, total).unwrap(), spans)
                    .unwrap();
                let mut start = 0;
                for &span in spans {
                    let rows = x.narrow(0, start, span.rows).unwrap();
                    let alone = linear.forward(&rows, &[span]).unwrap();
                    let together = batched.narrow(0, start, span.rows).unwrap();
                    assert_eq!(
                        alone.to_vec2::<f32>().unwrap(),
                        together.to_vec2::<f32>().unwrap(),
                        "{name}: {span:?} at row {start} in {spans:?}"
                    );
                    start += span.rows;
                }
            }
        }
    }

    /// A prompt row gets the same bits whatever chunk it is computed in: a prompt whose prefix
    /// came from the cache computes its tail as a shorter chunk, or a single row. Several decode
    /// rows of one sequence (tokens fed again after a preemption) equal one row at a time on
    /// quantized weights.
    #[test]
    fn a_row_gets_the_same_bits_in_any_chunk() {
        let device = Device::Cpu;
        for (name, k, linear) in test_linears(&device) {
            let x = Tensor::randn(0f32, 1.0, (300, k), &device).unwrap();
            let prompt = |start: usize, rows: usize| {
                let span = Span { rows, prompt: true };
                let y = linear.forward(&x.narrow(0, start, rows).unwrap(), &[span]);
                y.unwrap().to_vec2::<f32>().unwrap()
            };
            let whole = prompt(0, 300);
            for (start, rows) in [(0, 1), (17, 5), (40, 33), (256, 44)] {
                assert_eq!(
                    prompt(start, rows),
                    whole[start..start + rows],
                    "{name}: {rows} at {start}"
                );
            }
            let decode = |start: usize, rows: usize| {
                let y = linear.forward(&x.narrow(0, start, rows).unwrap(), &[Span::decode(rows)]);
                y.unwrap().to_vec2::<f32>().unwrap()
            };
            if linear.is_dense() {
                continue;
            }
            let several = decode(10, 16);
            for (i, row) in several.iter().enumerate() {
                assert_eq!(&decode(10 + i, 1)[0], row, "{name}: decode row {i}");
            }
        }
    }
}
