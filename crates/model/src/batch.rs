//! The model's input: token rows of different lengths in one left-padded tensor.
//!
//! Left padding keeps every row's last token in the last column, so one decode step appends one
//! column to every row and reads the logits of one column. Row `r` of a batch has `left_pad[r]`
//! padding columns: they are masked from every query, and positions count from the row's first
//! real token, so a padded row computes exactly what it computes alone.
//!
//! Training may instead pack several sequences into one unpadded row ([`Batch::with_segments`]):
//! each token then attends only to the earlier tokens of its own segment, and positions restart
//! at 0 where a segment starts, so every packed sequence computes what it computes alone.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// The id written into padding columns (any valid id works: padding is never attended to).
pub const PAD_ID: u32 = 0;

/// Token ids `[batch, seq]` and how many padding columns start each row.
///
/// # Shapes
/// - `ids`: `[batch, seq]`
/// - `left_pad`: `batch` entries, each `< seq`
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    pub ids: Tensor<B, 2, Int>,
    pub left_pad: Vec<usize>,
    /// Packed rows: a segment id per token, row-major `[batch, seq]` (see [`Batch::with_segments`]).
    pub segments: Option<Vec<u32>>,
}

impl<B: Backend> Batch<B> {
    /// Rows that are all real tokens.
    pub fn unpadded(ids: Tensor<B, 2, Int>) -> Self {
        let rows = ids.dims()[0];
        Self { ids, left_pad: vec![0; rows], segments: None }
    }

    /// Ids with a padding count per row. The ids are not checked against a vocabulary here (they
    /// are on the device); [`crate::QwenModel::batch`] checks host rows.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `left_pad` does not have one entry per row, or a row is all
    /// padding.
    pub fn new(ids: Tensor<B, 2, Int>, left_pad: Vec<usize>) -> Result<Self> {
        let [rows, seq] = ids.dims();
        if left_pad.len() != rows {
            return Err(ModelError::Config(format!("{} padding counts for {rows} rows", left_pad.len())));
        }
        if let Some(p) = left_pad.iter().find(|&&p| p >= seq) {
            return Err(ModelError::Config(format!("a row of {seq} columns with {p} of padding has no token")));
        }
        Ok(Self { ids, left_pad, segments: None })
    }

    /// The same rows packed: `segments` holds a segment id per token, row-major `[batch, seq]`, and
    /// each run of equal ids in a row is one sequence. A token attends only to the earlier tokens
    /// of its run and its position counts from the run's first token. Only the training forward
    /// without a cache takes packed rows.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `segments` does not have one id per token or a row is padded.
    pub fn with_segments(mut self, segments: Vec<u32>) -> Result<Self> {
        let [rows, seq] = self.dims();
        if segments.len() != rows * seq {
            return Err(ModelError::Config(format!("{} segment ids for {rows} rows of {seq}", segments.len())));
        }
        if self.is_padded() {
            return Err(ModelError::Config("packed rows cannot be left-padded".into()));
        }
        self.segments = Some(segments);
        Ok(self)
    }

    /// Host rows left-padded with [`PAD_ID`] to the longest.
    ///
    /// # Errors
    /// [`ModelError::EmptyInput`] for no rows or an empty row.
    pub fn left_padded<R: AsRef<[u32]>>(rows: &[R], device: &B::Device) -> Result<Self> {
        let seq = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
        if rows.is_empty() || rows.iter().any(|r| r.as_ref().is_empty()) {
            return Err(ModelError::EmptyInput);
        }
        let mut flat = Vec::with_capacity(rows.len() * seq);
        let mut left_pad = Vec::with_capacity(rows.len());
        for row in rows {
            let row = row.as_ref();
            let pad = seq - row.len();
            left_pad.push(pad);
            flat.extend(std::iter::repeat_n(PAD_ID as i64, pad));
            flat.extend(row.iter().map(|&t| t as i64));
        }
        let ids = Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device);
        Ok(Self { ids, left_pad, segments: None })
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }

    /// Real tokens in each row.
    pub fn lengths(&self) -> Vec<usize> {
        let seq = self.dims()[1];
        self.left_pad.iter().map(|p| seq - p).collect()
    }

    /// Whether any row has padding.
    pub fn is_padded(&self) -> bool {
        self.left_pad.iter().any(|&p| p > 0)
    }
}
