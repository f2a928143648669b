//! llama.cpp's GGUF files: the reader and the dequantization of their tensors.
//!
//! A GGUF file (versions 2 and 3, little-endian) is a header (`GGUF`, version, tensor count,
//! metadata count), metadata key/values of every GGUF value type (arrays included), tensor infos
//! (name, dims with `ne[0]` innermost, GGML type, offset), then the tensor data, aligned to
//! `general.alignment` (default 32). [`GgufFile::open`] memory-maps the file and checks all of it
//! before anything is used: every count and length is checked against the bytes left before
//! anything is allocated for it, and every tensor must lie inside the file, aligned, with a size
//! its type can have. A hostile file gets a [`ModelError::Gguf`], never a panic or a huge
//! allocation.
//!
//! [`dequantize`] turns F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and
//! Q6_K data (llama.cpp's block layouts,
//! `ggml-common.h`) into f32 values, with the very float operations of gguf-py's numpy reference
//! (`gguf/quants.py`), so the values are bit-identical (tests/gguf.rs). Other GGML types are known
//! by name and size (so a file that holds them still opens) and are a typed
//! [`ModelError::GgufType`] when read; ids no GGML version defines are refused at open.
//!
//! The parser is written here rather than taken from crates.io: the GGUF crates there (`gguf`,
//! `gguf-rs`, `gguf-rs-lib`) either are unmaintained, return untyped errors, or allocate what a
//! header claims without checking it against the file; the format itself is ~200 lines.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ModelError, Result};

/// `GGUF` as the little-endian u32 at the start of every file.
const MAGIC: &[u8; 4] = b"GGUF";
/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are refused (GGUF writers never nest more than once).
const MAX_DEPTH: usize = 4;

/// A GGML tensor type, by its id in `ggml.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

/// (id, name, values per block, bytes per block) of every GGML type (gguf-py's `GGML_QUANT_SIZES`).
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q2_K: Self = Self(10);
    pub const Q3_K: Self = Self(11);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const BF16: Self = Self(30);

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        GGML_TYPES.iter().find(|t| t.0 == self.0)
    }

    /// ggml's name (`Q4_K`), if the id is a GGML type.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|t| t.1)
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> Option<(u64, u64)> {
        self.entry().map(|t| (t.2, t.3))
    }

    /// Whether [`dequantize`] reads this type.
    pub fn dequantizable(self) -> bool {
        [
            Self::F32,
            Self::F16,
            Self::BF16,
            Self::Q8_0,
            Self::Q4_0,
            Self::Q4_1,
            Self::Q5_0,
            Self::Q5_1,
            Self::Q2_K,
            Self::Q3_K,
            Self::Q4_K,
            Self::Q5_K,
            Self::Q6_K,
        ]
        .contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "type {}", self.0),
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// An integer value of any width, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float or integer value as f64. An f32 becomes the shortest decimal that rounds to it
    /// (`1e-6`, not `9.99999997e-7`): the value the writer meant before storing it as f32.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.to_string().parse().unwrap_or(v.into())),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// ggml's `ne`: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: usize,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo {
    /// The shape in row-major order (PyTorch/safetensors order): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Map(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos, the data left in the map until read.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Start of the data section.
    data_offset: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!("truncated: {what} needs {n} bytes at offset {}, {} left", self.pos, self.left()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: usize, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_size as u64) > self.left() as u64 {
            return Err(format!("{what} {n} is more than the {} bytes left can hold", self.left()));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.count(1, what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool value {b}")),
            },
            8 => Value::String(self.string("string length")?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err("arrays nested too deep".into());
                }
                let item = self.u32("array type")?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("array of unknown value type {t}")),
                };
                let n = self.count(min, "array length")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            t => return Err(format!("unknown value type {t}")),
        })
    }
}

fn parse(
    buf: &[u8],
) -> std::result::Result<(u32, BTreeMap<String, Value>, BTreeMap<String, TensorInfo>, usize), String> {
    let mut c = Cursor { buf, pos: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} (versions 2 and 3 are read)"));
    }
    // A tensor info is at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a
    // key/value at least 8 (key length) + 4 (type) + 1.
    let n_tensors = c.count(24, "tensor count")?;
    let n_kv = c.count(13, "metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("key length")?;
        let ty = c.u32("value type")?;
        let value = c.value(ty, 0).map_err(|e| format!("metadata {key}: {e}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key {key} appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => return Err(format!("general.alignment {v:?} is not a power-of-two u32")),
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string("tensor name length")?;
        let n_dims = c.u32("tensor dims")? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor {name}: {n_dims} dims (1 to {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dim")?);
        }
        let ggml_type = GgmlType(c.u32("tensor type")?);
        let offset = c.u64("tensor offset")?;
        let (block, block_bytes) =
            ggml_type.block().ok_or_else(|| format!("tensor {name}: unknown GGML type id {}", ggml_type.0))?;
        // Every dim counts, a zero one as 1: dims such as [0, 2^40, 2^40] hold no values but their
        // product in another order (the row-major shape's, 2^80 · 0) overflows wherever a reader
        // multiplies them (found by the `gguf` fuzz target).
        if dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d.max(1))).is_none_or(|n| n > isize::MAX as u64) {
            return Err(format!("tensor {name}: dims {dims:?} overflow"));
        }
        let n: u64 = dims.iter().product();
        if dims[0] % block != 0 {
            return Err(format!("tensor {name}: row of {} values is not whole {ggml_type} blocks of {block}", dims[0]));
        }
        let size = (n / block).checked_mul(block_bytes).ok_or_else(|| format!("tensor {name}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"));
        }
        infos.push((name, dims, ggml_type, offset, size));
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    // The data section starts at the next multiple of the alignment; with a large
    // `general.alignment` that can lie past the end of the file, where no tensor, not even an
    // empty one, may be (found by the `gguf` fuzz target: a 0-byte tensor sliced past the end).
    let data_len = (buf.len() as u64).checked_sub(data_offset);
    if data_len.is_none() && !infos.is_empty() {
        return Err(format!(
            "the data section (offset {data_offset}) starts past the end of the file ({} bytes)",
            buf.len()
        ));
    }
    let data_len = data_len.unwrap_or(0);
    let mut tensors = BTreeMap::new();
    for (name, dims, ggml_type, offset, size) in infos {
        if offset.checked_add(size).is_none_or(|end| end > data_len) {
            return Err(format!("tensor {name}: {size} bytes at offset {offset} run past the end of the file"));
        }
        let dims = dims.into_iter().map(|d| d as usize).collect();
        let info = TensorInfo { dims, ggml_type, offset: offset as usize, size: size as usize };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(format!("tensor {name} appears twice"));
        }
    }
    Ok((version, metadata, tensors, data_offset as usize))
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ModelError::Io { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and lives as long as `GgufFile`; a file changed under us
        // while loading is outside what any loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Bytes::Map(map))
    }

    /// Parses a GGUF file held in memory (`path` only names it in errors).
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let (version, metadata, tensors, data_offset) =
            parse(&bytes).map_err(|reason| ModelError::Gguf { path: path.clone(), reason })?;
        Ok(Self { path, bytes, version, metadata, tensors, data_offset })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A typed error about this file.
    pub fn error(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf { path: self.path.clone(), reason: reason.into() }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.error(format!("{key} is missing or not a string")))
    }

    /// An optional non-negative integer value (an error when present with another type).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| v.as_u64().ok_or_else(|| self.error(format!("{key} is not a non-negative integer"))))
            .transpose()
    }

    /// An optional number (an error when present with another type).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.error(format!("{key} is not a number")))).transpose()
    }

    /// An optional array of strings.
    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| self.error(format!("{key} is not an array")))?;
        items
            .iter()
            .map(|s| s.as_str().ok_or_else(|| self.error(format!("{key} holds a non-string"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let start = self.data_offset + info.offset;
        Ok((info, &self.bytes[start..start + info.size]))
    }

    /// Drops the pages of tensor `name` from this process's memory once the loader has copied
    /// it (the map stays valid: a later read faults them back in from the file, unchanged). A mapped file's
    /// touched pages count in the resident set, so without this a load peaks at the file's size
    /// plus the model's. Whole pages inside the tensor only; a no-op for files held in memory.
    pub fn release(&self, name: &str) {
        if let Some(info) = self.tensors.get(name) {
            self.release_range(name, 0, info.size);
        }
    }

    /// [`GgufFile::release`] of bytes `start..start + len` of tensor `name`'s data.
    pub fn release_range(&self, name: &str, start: usize, len: usize) {
        #[cfg(unix)]
        if let (Bytes::Map(map), Some(info)) = (&self.bytes, self.tensors.get(name)) {
            const PAGE: usize = 4096;
            let first = self.data_offset + info.offset + start.min(info.size);
            let last = self.data_offset + info.offset + (start + len).min(info.size);
            let (start, end) = (first.div_ceil(PAGE) * PAGE, last / PAGE * PAGE);
            if end > start {
                // SAFETY: the map is private and read-only, so MADV_DONTNEED loses nothing and
                // changes no byte a reader can see: the pages are read again from the file if
                // touched (a slice over them may still be alive; its contents stay the same).
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }

    /// A tensor dequantized to f32, in row-major order of [`TensorInfo::shape`].
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let values = dequantize(info.ggml_type, bytes)
            .ok_or_else(|| ModelError::GgufType { name: name.to_string(), ggml_type: info.ggml_type.to_string() })?;
        Ok((info.shape(), values))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The `j`-th 6-bit (scale, min) pair of Q4_K/Q5_K's 12 scale bytes (ggml's `get_scale_min_k4`).
fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// `bytes` of GGML type `ty` as f32 values, or `None` for a type this crate does not read.
/// `bytes` must be whole blocks (as [`GgufFile`] guarantees for its tensors); a trailing partial
/// block is ignored.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (block, size) = ty.block()?;
    let (block, size) = (block as usize, size as usize);
    let mut out = Vec::with_capacity(bytes.len() / size * block);
    let blocks = bytes.chunks_exact(size);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(blocks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        // d: f16, qs: 32 x i8; y = qs * d.
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        // d: f16, qs: 16 bytes; y[j] = (lo nibble - 8) * d, y[j + 16] = (hi nibble - 8) * d.
        GgmlType::Q4_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * f32::from((q & 0x0F) as i8 - 8)));
                out.extend(qs.iter().map(|&q| d * f32::from((q >> 4) as i8 - 8)));
            }
        }
        // d, m: f16, qs: 16 bytes; y = d * nibble + m (low nibbles first, as Q4_0).
        GgmlType::Q4_1 => {
            for b in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0F) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
        // d: f16, qh: u32 (bit j = the fifth bit of value j), qs: 16 bytes of nibbles (low nibbles
        // are values 0..16); Q5_0: y = d * (q - 16); Q5_1 (with m: f16 after d): y = d * q + m.
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = ty == GgmlType::Q5_1;
            let at = if with_min { 4 } else { 2 };
            for b in blocks {
                let d = f16_at(b, 0);
                let m = if with_min { f16_at(b, 2) } else { 0.0 };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                for j in 0..32 {
                    let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
                    let q = low | ((((qh >> j) & 1) as u8) << 4);
                    out.push(if with_min { d * f32::from(q) + m } else { d * f32::from(q as i8 - 16) });
                }
            }
        }
        // scales: 16 bytes (low nibble: scale, high nibble: min, per 16 values), qs: 64 bytes of
        // 2-bit values, d, dmin: f16. Value f of the block: byte 32 * (f / 128) + f % 32, bits
        // 2 * (f % 128 / 32); y = d * scale * q - dmin * min.
        GgmlType::Q2_K => {
            for b in blocks {
                let (sc, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                for f in 0..256 {
                    let s = sc[f / 16];
                    let (dl, ml) = (d * f32::from(s & 0x0F), dmin * f32::from(s >> 4));
                    let q = (qs[32 * (f / 128) + f % 32] >> (2 * (f % 128 / 32))) & 3;
                    out.push(dl * f32::from(q) - ml);
                }
            }
        }
        // hmask: 32 bytes (value f's high bit is bit f / 32 of byte f % 32, set = no offset), qs: 64
        // bytes of 2-bit values (as Q2_K), scales: 12 bytes of sixteen 6-bit scales (biased by 32),
        // d: f16; y = d * scale * (q - 4 * !high).
        GgmlType::Q3_K => {
            for b in blocks {
                let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_at(b, 108);
                let scale = |i: usize| -> f32 {
                    let low = if i < 8 { sc[i] & 0x0F } else { sc[i - 8] >> 4 };
                    let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
                    f32::from((low | (high << 4)) as i8 - 32)
                };
                for f in 0..256 {
                    let dl = d * scale(f / 16);
                    let low = ((qs[32 * (f / 128) + f % 32] >> (2 * (f % 128 / 32))) & 3) as i8;
                    let high = ((hmask[f % 32] >> (f / 32)) & 1) ^ 1;
                    out.push(dl * f32::from(low - ((high << 2) as i8)));
                }
            }
        }
        // d, dmin: f16; scales: 12 bytes of eight 6-bit scales and mins; qs: 128 bytes. Each 64
        // values: 32 low nibbles (scale/min 2j), then 32 high nibbles (2j + 1); y = d*sc*q - dmin*m.
        GgmlType::Q4_K => {
            for b in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let s = &b[4..16];
                let qs = &b[16..144];
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(s, 2 * j);
                    let (sc2, m2) = scale_min_k4(s, 2 * j + 1);
                    let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
                    out.extend(q.iter().map(|&x| d1 * f32::from(x & 0x0F) - m1));
                    out.extend(q.iter().map(|&x| d2 * f32::from(x >> 4) - m2));
                }
            }
        }
        // As Q4_K with qh: 32 bytes after the scales, bit s of byte l the fifth bit of value l of
        // the s-th 32 values.
        GgmlType::Q5_K => {
            for b in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (s, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for sub in 0..8 {
                    let (sc, m) = scale_min_k4(s, sub);
                    let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                    let q = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
                    out.extend((0..32).map(|l| {
                        let low = (q[l] >> (4 * (sub % 2))) & 0x0F;
                        dl * f32::from(low | (((qh[l] >> sub) & 1) << 4)) - ml
                    }));
                }
            }
        }
        // ql: 128 bytes (low 4 bits), qh: 64 bytes (high 2 bits), scales: 16 x i8, d: f16. Two
        // halves of 128 values; in each, value l + 32k (k = 0..4) takes ql nibble and qh bit pair
        // k; y = d * scale[16 values] * (q - 32).
        GgmlType::Q6_K => {
            for b in blocks {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (k, &q) in q.iter().enumerate() {
                            let scale = d * f32::from(sc[l / 16 + 2 * k] as i8);
                            y[l + 32 * k] = scale * f32::from(q as i8 - 32);
                        }
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        _ => return None,
    }
    Some(out)
}
