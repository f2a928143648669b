//! The pieces every resumable checkpoint is made of, for the pretraining [`Trainer`](crate::Trainer)
//! and for any other training run (the alignment stages):
//!
//! - [`write_dir_atomically`]: a checkpoint folder is written into `DIR.tmp-<pid>`, gets a
//!   [`CHECKSUMS_FILE`] (the sha256 and size of every file in it, written last, everything
//!   synced to disk), and is renamed into place; an existing `DIR` is first renamed to
//!   `DIR.old-<pid>` and removed after. A crash leaves either the old or the new folder under `DIR`
//!   (or, between the two renames, the old one under `DIR.old-<pid>`). [`write_file_atomically`]
//!   does the same for one file.
//! - [`intact_checkpoint`]: what a resume loads: `DIR` if its checksums verify
//!   ([`verify_checksums`]), else an intact `DIR.old-*` that a crash left behind, else
//!   [`TrainError::Corrupt`]; a damaged or partial checkpoint is never loaded.
//! - [`write_json`] / [`read_json`]: state files, with typed errors naming the file.
//! - [`param_ids`] / [`with_param_ids`] / [`with_stable_ids`]: burn keys gradients by parameter id,
//!   and ids are random per process. Checkpoints do not depend on them (optimizer state is saved in
//!   the module's deterministic visiting order, see [`crate::step::Stepper::save`]); a module loaded
//!   from a checkpoint gets [`stable_ids`], the same in every process, so data-parallel replicas
//!   that each load it agree.
//! - [`load_trainable`]: a Qwen language model from a checkpoint folder, on the autodiff backend,
//!   trainable, with [`stable_ids`].
//! - [`fault_point`]: a test hook that pauses at the steps of a checkpoint write (environment
//!   variable [`FAULT_PAUSE_ENV`]) so that a test can kill the process inside one.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use qwen_context::RopeConvention;
use qwen_model::{Precision, Qwen, QwenModel};

use crate::error::{io, Result, TrainError};

struct CollectIds(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for CollectIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.id);
    }
}

struct AssignIds<'a> {
    ids: &'a [u64],
    next: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for AssignIds<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, value, mapper) = param.consume();
        // Counted past the end: the caller compares `next` with the number of ids.
        let id = self.ids.get(self.next).map(|&v| ParamId::from(v)).unwrap_or_default();
        self.next += 1;
        // Loaded weights are not marked trainable; every parameter of a trained module is.
        Param::from_mapped_value(id, value.require_grad(), mapper)
    }
}

/// `module`'s parameter ids in visiting order.
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<u64> {
    let mut ids = CollectIds(Vec::new());
    module.visit(&mut ids);
    ids.0.iter().map(|id| id.val()).collect()
}

/// `n` parameter ids that are the same in every process: what a module loaded from a checkpoint
/// gets ([`with_stable_ids`]). Spread over the whole `u64` range (a SplitMix64 sequence) so that
/// they do not collide with burn's own ids in practice.
pub fn stable_ids(n: usize) -> Vec<u64> {
    stable_ids_in(0, n)
}

/// [`stable_ids`] of another `namespace`: the ids of a second trainable module in the same
/// process (PPO's value model beside its policy), disjoint from the first's in practice, so that
/// nothing keyed by parameter id can mix the two up.
pub fn stable_ids_in(namespace: u64, n: usize) -> Vec<u64> {
    let base = 0x5157_454e_5f49_4453u64 ^ namespace.wrapping_mul(0xd1b5_4a32_d192_ed03);
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

/// The number of float parameters (tensors) of `module`.
pub fn param_count<B: Backend, M: Module<B>>(module: &M) -> usize {
    let mut ids = CollectIds(Vec::new());
    module.visit(&mut ids);
    ids.0.len()
}

/// `module` with [`stable_ids`] as its parameter ids (in visiting order), every parameter trainable.
pub fn with_stable_ids<B: AutodiffBackend, M: Module<B>>(module: M) -> M {
    with_stable_ids_in::<B, M>(module, 0)
}

/// `module` with [`stable_ids_in`] `namespace` as its parameter ids, every parameter trainable.
pub fn with_stable_ids_in<B: AutodiffBackend, M: Module<B>>(module: M, namespace: u64) -> M {
    let ids = stable_ids_in(namespace, param_count::<B, M>(&module));
    let mut assign = AssignIds { ids: &ids, next: 0 };
    module.map(&mut assign)
}

/// `module` with `ids` as its parameter ids (in visiting order), every parameter trainable.
///
/// # Errors
/// [`TrainError::Mismatch`] when the module has a different number of parameters.
pub fn with_param_ids<B: AutodiffBackend, M: Module<B>>(module: M, ids: &[u64]) -> Result<M> {
    let mut assign = AssignIds { ids, next: 0 };
    let module = module.map(&mut assign);
    if assign.next != ids.len() {
        return Err(TrainError::Mismatch(format!(
            "the model has {} parameters, the checkpoint lists {}",
            assign.next,
            ids.len()
        )));
    }
    Ok(module)
}

/// `DIR` with `.{tag}-<pid>` appended to its last component.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| TrainError::Config(format!("checkpoint path {} has no final component", path.display())))?;
    let mut name = name.to_os_string();
    name.push(format!(".{tag}-{}", std::process::id()));
    Ok(path.with_file_name(name))
}

/// The folders beside `dir` named `DIR.{tag}-*` (left by earlier, interrupted writes).
fn siblings(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = format!("{name}.{tag}-");
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|e| dir.with_file_name(e.file_name()))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Environment variable of the [`fault_point`] test hook: milliseconds to pause at each point.
pub const FAULT_PAUSE_ENV: &str = "QWEN_FAULT_PAUSE_MS";

/// A test hook inside checkpoint writes: when [`FAULT_PAUSE_ENV`] is set, prints
/// `fault-point <name>` on stderr and sleeps that many milliseconds, so that a crash test can kill
/// the process at a known point of the write. Does nothing otherwise.
#[doc(hidden)]
pub fn fault_point(name: &str) {
    if let Some(ms) = std::env::var(FAULT_PAUSE_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
        eprintln!("fault-point {name}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Syncs a folder's entry list to disk (after creating or renaming entries in it). Errors are
/// ignored where the platform cannot open folders for syncing.
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// File name of the checksums inside every checkpoint folder [`write_dir_atomically`] writes.
pub const CHECKSUMS_FILE: &str = "checksums.json";
const CHECKSUMS_FORMAT: u32 = 1;

/// One file's entry in [`CHECKSUMS_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// Contents of [`CHECKSUMS_FILE`]: every other file of the folder (subfolders included, paths
/// relative with `/`), sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    pub format: u32,
    pub files: BTreeMap<String, FileSum>,
}

/// The sha256 and size of the file at `path`, read in 1 MiB pieces.
fn file_sum(path: &Path) -> std::io::Result<FileSum> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileSum { bytes, sha256 })
}

/// Every file under `dir` (recursively) as `(relative path with '/', full path)`.
fn files_under(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(io(dir))?.collect::<std::io::Result<_>>().map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let kind = e.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            files_under(&path, &rel, out)?;
            sync_dir(&path);
        } else if rel != CHECKSUMS_FILE {
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Writes [`CHECKSUMS_FILE`] into `dir` for every other file under it, after syncing each one to
/// disk (so that the checksums never describe data that is not there yet).
pub fn write_checksums(dir: &Path) -> Result<()> {
    let mut files = Vec::new();
    files_under(dir, "", &mut files)?;
    let mut sums = Checksums { format: CHECKSUMS_FORMAT, files: BTreeMap::new() };
    for (rel, path) in files {
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        sums.files.insert(rel, file_sum(&path).map_err(io(&path))?);
    }
    let path = dir.join(CHECKSUMS_FILE);
    let json = serde_json::to_vec_pretty(&sums).map_err(|source| TrainError::State { path: path.clone(), source })?;
    let mut file = std::fs::File::create(&path).map_err(io(&path))?;
    std::io::Write::write_all(&mut file, &json).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    sync_dir(dir);
    Ok(())
}

/// Checks every file that `dir`'s [`CHECKSUMS_FILE`] lists: present, of its size and sha256.
///
/// # Errors
/// [`TrainError::Corrupt`] naming the first file that is missing, truncated or changed (or the
/// checksums file itself when it is missing or unreadable, or lists a path outside `dir`).
pub fn verify_checksums(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let corrupt = |file: &str, reason: String| TrainError::Corrupt { path: dir.into(), file: file.into(), reason };
    let path = dir.join(CHECKSUMS_FILE);
    let bytes = read_bounded(&path).map_err(|e| corrupt(CHECKSUMS_FILE, e.to_string()))?;
    let sums: Checksums = serde_json::from_slice(&bytes).map_err(|e| corrupt(CHECKSUMS_FILE, e.to_string()))?;
    if sums.format != CHECKSUMS_FORMAT {
        return Err(corrupt(CHECKSUMS_FILE, format!("format {} (this build reads {CHECKSUMS_FORMAT})", sums.format)));
    }
    for (rel, want) in &sums.files {
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\')) {
            return Err(corrupt(rel, "not a plain relative path".into()));
        }
        let file = parts.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
        let meta = std::fs::metadata(&file).map_err(|e| corrupt(rel, e.to_string()))?;
        if meta.len() != want.bytes {
            return Err(corrupt(rel, format!("{} bytes, {} expected", meta.len(), want.bytes)));
        }
        let got = file_sum(&file).map_err(|e| corrupt(rel, e.to_string()))?;
        if got.sha256 != want.sha256 {
            return Err(corrupt(rel, "sha256 differs".into()));
        }
    }
    Ok(())
}

/// Whether `dir` or a folder an interrupted write left beside it (`DIR.old-*`) exists: whether
/// there is a checkpoint to resume (intact or not: [`intact_checkpoint`] decides).
pub fn has_checkpoint(dir: impl AsRef<Path>) -> bool {
    let dir = dir.as_ref();
    dir.is_dir() || !siblings(dir, "old").is_empty()
}

/// The checkpoint folder to resume from: `dir` when its checksums verify, else the newest intact
/// `DIR.old-*` (the previous checkpoint, which a crash between the two renames of
/// [`write_dir_atomically`] leaves there). `Ok(None)` when neither exists.
///
/// # Errors
/// [`TrainError::Corrupt`] (for `dir`, or for the previous one when `dir` is missing) when no
/// candidate is intact.
pub fn intact_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    let dir = dir.as_ref();
    let mut first_error = None;
    if dir.is_dir() {
        match verify_checksums(dir) {
            Ok(()) => return Ok(Some(dir.to_path_buf())),
            Err(e) => first_error = Some(e),
        }
    }
    let mut previous = siblings(dir, "old");
    // The newest first (by modification time; names hold process ids, which say nothing of age).
    previous.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).and_then(|m| m.modified()).ok()));
    for old in previous {
        match verify_checksums(&old) {
            Ok(()) => {
                if let Some(e) = &first_error {
                    eprintln!("warning: {e}; resuming from the previous checkpoint {}", old.display());
                }
                return Ok(Some(old));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// [`intact_checkpoint`], with "no checkpoint at all" as an error. When `dir` itself is intact,
/// what interrupted writes left beside it (`DIR.tmp-*`, `DIR.old-*`) is removed here, as the next
/// successful write would: a run killed after its last checkpoint went into place but before the
/// previous one was removed writes no checkpoint again when it resumes at its end.
pub fn resume_dir(dir: impl AsRef<Path>) -> Result<PathBuf> {
    let dir = dir.as_ref();
    let found = intact_checkpoint(dir)?
        .ok_or_else(|| TrainError::Config(format!("resume: no checkpoint in {}", dir.display())))?;
    if found == dir {
        for stale in siblings(dir, "tmp").into_iter().chain(siblings(dir, "old")) {
            let _ = std::fs::remove_dir_all(stale);
        }
    }
    Ok(found)
}

/// Calls `write` on a fresh temporary folder beside `dir`, writes its [`CHECKSUMS_FILE`], then puts
/// that folder in place of `dir` (see the module docs). When `write` fails, `dir` is untouched and
/// the temporary folder removed. After a successful write, folders left beside `dir` by earlier
/// interrupted writes (`DIR.tmp-*`, `DIR.old-*`) are removed. Generic over the error type so that
/// other crates' writers (with their own errors) fit.
pub fn write_dir_atomically<E: From<TrainError>>(
    dir: impl AsRef<Path>,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = dir.as_ref();
    let tmp = sibling(dir, "tmp")?;
    remove_dir_if_present(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = write(&tmp).and_then(|()| {
        fault_point("files-written");
        Ok(write_checksums(&tmp)?)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fault_point("checksums-written");
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.exists() {
        let old = sibling(dir, "old")?;
        remove_dir_if_present(&old)?;
        std::fs::rename(dir, &old).map_err(io(dir))?;
        fault_point("old-moved-aside");
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        sync_dir(parent);
        fault_point("new-in-place");
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        sync_dir(parent);
    }
    for stale in siblings(dir, "tmp").into_iter().chain(siblings(dir, "old")) {
        let _ = std::fs::remove_dir_all(stale);
    }
    Ok(())
}

/// Writes `bytes` to `path.tmp-<pid>`, syncs it, and renames it to `path`: after a crash `path`
/// holds the old bytes or the new ones, never a torn file.
pub fn write_file_atomically(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let tmp = sibling(path, "tmp")?;
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `value` as pretty JSON in `path` (atomically).
pub fn write_json<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    let json = serde_json::to_vec_pretty(value).map_err(|source| TrainError::State { path: path.into(), source })?;
    write_file_atomically(path, &json)
}

/// The largest JSON file of a checkpoint read (`trainer_state.json`, `checksums.json`, ...): 64 MiB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// The bytes of a checkpoint's JSON file, refused with [`std::io::ErrorKind::FileTooLarge`] past
/// [`MAX_JSON_BYTES`] before more than the limit is read.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= MAX_JSON_BYTES {
        file.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes)?;
    }
    if len.max(bytes.len() as u64) > MAX_JSON_BYTES {
        let reason = format!("longer than the limit of {MAX_JSON_BYTES} bytes");
        return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, reason));
    }
    Ok(bytes)
}

/// The JSON value in `path` (at most [`MAX_JSON_BYTES`]).
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = read_bounded(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| TrainError::State { path: path.into(), source })
}

/// Where a checkpoint of a LoRA run keeps its adapters (PEFT's layout), beside the frozen base.
pub const ADAPTER_DIR: &str = "adapter";

/// The language model saved (f32, by `QwenModel::save`) in `dir`, on the autodiff backend, every
/// parameter trainable and given [`stable_ids`], with the run's `convention` and `precision`.
///
/// When `dir` also holds LoRA adapters ([`ADAPTER_DIR`], as a LoRA run's checkpoint does), they are
/// attached, the ids cover them too, and the base is frozen: only the adapters are trainable.
pub fn load_trainable<B: AutodiffBackend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    convention: RopeConvention,
    precision: Precision,
) -> Result<QwenModel<B>> {
    let dir = dir.as_ref();
    let mut inner = qwen_model::load::<B::InnerBackend>(dir, device)?;
    let lora = dir.join(ADAPTER_DIR).join(qwen_model::lora::ADAPTER_CONFIG).is_file();
    if lora {
        inner = inner.load_adapter(dir.join(ADAPTER_DIR))?;
    }
    let model = with_stable_ids::<B, _>(Qwen::<B>::from_inner(inner.model));
    let model = QwenModel { config: inner.config, model, convention, precision };
    Ok(if lora { model.freeze_base() } else { model })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qwen-persist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A checkpoint folder `base/ckpt` with a file, a larger one and one in a subfolder.
    fn checkpoint(base: &Path, tag: u8) -> PathBuf {
        let dir = base.join("ckpt");
        write_dir_atomically::<TrainError>(&dir, |tmp| {
            std::fs::write(tmp.join("state.json"), format!("{{\"tag\": {tag}}}")).map_err(io(tmp))?;
            std::fs::write(tmp.join("weights.bin"), vec![tag; 3000]).map_err(io(tmp))?;
            std::fs::create_dir_all(tmp.join("value")).map_err(io(tmp))?;
            std::fs::write(tmp.join("value/optimizer.bin"), [1, 2, 3, tag]).map_err(io(tmp))
        })
        .unwrap();
        dir
    }

    /// A copy of the folder `checkpoint` writes, as a previous checkpoint moved aside.
    fn copy_checkpoint(dir: &Path, old: &Path) {
        std::fs::create_dir_all(old.join("value")).unwrap();
        for f in ["state.json", "weights.bin", CHECKSUMS_FILE, "value/optimizer.bin"] {
            std::fs::copy(dir.join(f), old.join(f)).unwrap();
        }
    }

    fn corrupt_file(r: Result<()>) -> String {
        match r {
            Err(TrainError::Corrupt { file, .. }) => file,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn checksums_cover_every_file_and_catch_each_kind_of_damage() {
        let base = tmp("damage");
        let dir = checkpoint(&base, 7);
        let sums: Checksums = read_json(dir.join(CHECKSUMS_FILE)).unwrap();
        let names: Vec<&str> = sums.files.keys().map(String::as_str).collect();
        assert_eq!(names, ["state.json", "value/optimizer.bin", "weights.bin"]);
        assert_eq!(sums.files["weights.bin"].bytes, 3000);
        verify_checksums(&dir).unwrap();
        assert_eq!(intact_checkpoint(&dir).unwrap(), Some(dir.clone()));

        let restore = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        // A flipped byte (same size).
        let mut w = std::fs::read(dir.join("weights.bin")).unwrap();
        w[1234] ^= 0x10;
        restore("weights.bin", &w);
        assert_eq!(corrupt_file(verify_checksums(&dir)), "weights.bin");
        w[1234] ^= 0x10;
        restore("weights.bin", &w);
        verify_checksums(&dir).unwrap();
        // A truncated file.
        restore("weights.bin", &w[..100]);
        assert_eq!(corrupt_file(verify_checksums(&dir)), "weights.bin");
        restore("weights.bin", &w);
        // A missing file, in a subfolder.
        std::fs::remove_file(dir.join("value/optimizer.bin")).unwrap();
        assert_eq!(corrupt_file(verify_checksums(&dir)), "value/optimizer.bin");
        restore("value/optimizer.bin", &[1, 2, 3, 7]);
        verify_checksums(&dir).unwrap();
        // No checksums, or unreadable ones, or a path outside the folder.
        let json = std::fs::read(dir.join(CHECKSUMS_FILE)).unwrap();
        restore(CHECKSUMS_FILE, &json[..json.len() / 2]);
        assert_eq!(corrupt_file(verify_checksums(&dir)), CHECKSUMS_FILE);
        std::fs::remove_file(dir.join(CHECKSUMS_FILE)).unwrap();
        assert_eq!(corrupt_file(verify_checksums(&dir)), CHECKSUMS_FILE);
        assert!(matches!(intact_checkpoint(&dir), Err(TrainError::Corrupt { .. })));
        let mut evil = sums.clone();
        evil.files.insert("../outside".into(), FileSum { bytes: 0, sha256: String::new() });
        restore(CHECKSUMS_FILE, &serde_json::to_vec(&evil).unwrap());
        assert_eq!(corrupt_file(verify_checksums(&dir)), "../outside");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_damaged_checkpoint_falls_back_to_the_intact_previous_one() {
        let base = tmp("fallback");
        let dir = base.join("ckpt");
        assert_eq!(intact_checkpoint(&dir).unwrap(), None);
        assert!(!has_checkpoint(&dir));
        assert!(matches!(resume_dir(&dir), Err(TrainError::Config(_))));
        // What a kill between the two renames leaves: the previous checkpoint moved aside, no `DIR`.
        checkpoint(&base, 1);
        let old = base.join("ckpt.old-4242");
        std::fs::rename(&dir, &old).unwrap();
        assert!(has_checkpoint(&dir));
        assert_eq!(resume_dir(&dir).unwrap(), old);
        // A newer checkpoint in place, then damaged: the previous one is used.
        checkpoint(&base, 2);
        assert!(!old.exists(), "a successful write removes what interrupted ones left");
        let old = base.join("ckpt.old-77");
        copy_checkpoint(&dir, &old);
        std::fs::write(dir.join("weights.bin"), [0u8; 3000]).unwrap();
        assert_eq!(resume_dir(&dir).unwrap(), old);
        // Both damaged: the error names the newest.
        std::fs::write(old.join("state.json"), "{}").unwrap();
        match resume_dir(&dir) {
            Err(TrainError::Corrupt { path, file, .. }) => {
                assert_eq!((path, file.as_str()), (dir.clone(), "weights.bin"))
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_successful_write_removes_the_leftovers_of_interrupted_ones_and_a_failed_one_changes_nothing() {
        let base = tmp("leftovers");
        let dir = checkpoint(&base, 1);
        for stale in ["ckpt.tmp-1", "ckpt.old-2"] {
            std::fs::create_dir_all(base.join(stale)).unwrap();
        }
        std::fs::create_dir_all(base.join("ckpt-other")).unwrap();
        let failed = write_dir_atomically::<TrainError>(&dir, |tmp| {
            std::fs::write(tmp.join("state.json"), "half").map_err(io(tmp))?;
            Err(TrainError::Config("disk full".into()))
        });
        assert!(matches!(failed, Err(TrainError::Config(_))));
        verify_checksums(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), b"{\"tag\": 1}");
        checkpoint(&base, 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["ckpt", "ckpt-other"]);
        verify_checksums(&dir).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn resuming_from_an_intact_checkpoint_removes_the_leftovers_beside_it() {
        // A kill after the last checkpoint went into place but before the previous one was removed:
        // the resumed run is already at its end and writes nothing, so resume must tidy up.
        let base = tmp("resume-leftovers");
        let dir = checkpoint(&base, 1);
        let old = base.join("ckpt.old-9");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::copy(dir.join("state.json"), old.join("state.json")).unwrap();
        std::fs::create_dir_all(base.join("ckpt.tmp-8")).unwrap();
        assert_eq!(resume_dir(&dir).unwrap(), dir);
        assert!(!old.exists() && !base.join("ckpt.tmp-8").exists());
        // A damaged `DIR` keeps the previous checkpoint it falls back to.
        let old = base.join("ckpt.old-10");
        copy_checkpoint(&dir, &old);
        std::fs::write(dir.join("weights.bin"), [0u8; 3000]).unwrap();
        assert_eq!(resume_dir(&dir).unwrap(), old);
        assert!(old.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
