//! The qwen-rs stack in one place: re-exports of the library crates, and the backend the
//! examples run on, chosen by cargo feature (`flex` by default; `ndarray`; `wgpu`; `cuda`).

pub use qwen_context as context;
pub use qwen_data as data;
pub use qwen_model as model;
pub use qwen_tokenizer as tokenizer;
pub use qwen_train as train;

/// See the `mimalloc` feature in Cargo.toml: the allocator of the binaries built on this package.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

    /// The default device of the selected backend.
    pub fn device() -> burn::tensor::Device<Backend> {
        Default::default()
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
