//! The qwen-rs stack in one place: re-exports of the library crates, and the backend the
//! examples run on, chosen by cargo feature (`flex` by default; `ndarray`; `wgpu`; `cuda`).

pub mod chat;
pub mod gguf;

pub use qwen_align as align;
pub use qwen_context as context;
pub use qwen_data as data;
pub use qwen_model as model;
pub use qwen_tokenizer as tokenizer;
pub use qwen_train as train;

/// See the `mimalloc` feature in Cargo.toml: the allocator of the binaries built on this package.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells the allocator to keep freed memory instead of returning it to the kernel (mimalloc's
/// `purge_delay = -1`). Training frees and allocates tensors of the same large sizes every step;
/// returned pages come back zero-filled by the kernel on the next touch, which measured ~10% of a
/// CPU training step. Call once at the start of a long-running job; a no-op without the
/// `mimalloc` feature.
pub fn keep_freed_memory() {
    #[cfg(feature = "mimalloc")]
    {
        // `mi_option_purge_delay` in mimalloc.h (v3): the 16th entry of `mi_option_e`.
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: sets a process-wide integer option; mimalloc allows this at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// The backend selected by cargo features: `cuda` > `wgpu` > `ndarray` > `flex`.
pub mod backend {
    #[cfg(feature = "cuda")]
    pub type Backend = burn::backend::Cuda;
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    pub type Backend = burn::backend::Wgpu;
    #[cfg(all(feature = "ndarray", not(any(feature = "wgpu", feature = "cuda"))))]
    pub type Backend = burn::backend::NdArray;
    #[cfg(all(feature = "flex", not(any(feature = "ndarray", feature = "wgpu", feature = "cuda"))))]
    pub type Backend = burn::backend::Flex;
    #[cfg(not(any(feature = "flex", feature = "ndarray", feature = "wgpu", feature = "cuda")))]
    compile_error!("enable one backend feature: flex, ndarray, wgpu or cuda");

    /// The selected backend with automatic differentiation, for training.
    pub type TrainBackend = burn::backend::Autodiff<Backend>;

    /// [`TrainBackend`] with activation checkpointing: burn's balanced strategy, which recomputes
    /// memory-bound operations (element-wise ones) during the backward pass instead of keeping
    /// their outputs from the forward pass (`sft --checkpointing`).
    pub type CheckpointedTrainBackend =
        burn::backend::Autodiff<Backend, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;

    /// What an inference command (`generate`, `chat`, `serve`) keeps weights in for the
    /// `--dtype` asked for. On the CPU backends f32 weights stay in HF's `[d_out, d_in]` layout
    /// and are multiplied by `qwen_model::packed` (its matrix-vector kernel at decode, the gemm
    /// crate on the weights' own bytes at prefill): measured faster than burn's `[d_in, d_out]`
    /// matmul at decode, no slower at prefill, and without the transposed copy at load
    /// (docs/model.md, "f32 for inference"). GPU backends keep burn's tensors, and so does a
    /// model that gets a LoRA adapter (`with_adapter`: `--adapter` wraps burn's linear layers).
    /// Training loads [`qwen_model::WeightDtype::F32`] as it is.
    pub fn inference_dtype(requested: qwen_model::WeightDtype, with_adapter: bool) -> qwen_model::WeightDtype {
        let cpu = cfg!(not(any(feature = "wgpu", feature = "cuda")));
        if cpu && requested == qwen_model::WeightDtype::F32 && !with_adapter {
            qwen_model::WeightDtype::F32Packed
        } else {
            requested
        }
    }

    /// The default device of the selected backend.
    pub fn device() -> burn::tensor::Device<Backend> {
        Default::default()
    }

    /// Device number `index` of the selected backend (CUDA ordinal, wgpu discrete GPU); the CPU
    /// backends have one device, which every index names.
    pub fn device_at(index: usize) -> burn::tensor::Device<Backend> {
        #[cfg(feature = "cuda")]
        return burn::backend::cuda::CudaDevice { index };
        #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
        return burn::backend::wgpu::WgpuDevice::DiscreteGpu(index);
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        {
            let _ = index;
            Default::default()
        }
    }

    /// Whether the backend computes on the CPU (tensor data is host memory): then the optimizer's
    /// fused host update ([`qwen_train::Update::Host`]) is the fast one.
    pub fn is_cpu() -> bool {
        !cfg!(any(feature = "cuda", feature = "wgpu"))
    }

    /// The optimizer update that suits the backend.
    pub fn optimizer_update() -> qwen_train::Update {
        if is_cpu() {
            qwen_train::Update::Host
        } else {
            qwen_train::Update::Tensor
        }
    }

    /// The backend's name, for reports.
    pub fn name() -> &'static str {
        if cfg!(feature = "cuda") {
            "cuda"
        } else if cfg!(feature = "wgpu") {
            "wgpu"
        } else if cfg!(feature = "ndarray") {
            "ndarray"
        } else {
            "flex"
        }
    }
}
