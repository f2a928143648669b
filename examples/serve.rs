//! An OpenAI-compatible HTTP server on a model folder, with continuous batching.
//!
//! ```text
//! cargo run --release --example serve -- --model DIR [--port 8080] [--max-batch 16] [--api-key KEY]
//! curl http://127.0.0.1:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'
//! ```
//!
//! The tokenizer is the folder's `tokenizer.json` or `.tiktoken` file unless `--tokenizer` names
//! one; the chat format is the folder's Jinja chat template, or Qwen-1's ChatML when it has none;
//! stop ids are ChatML's plus `generation_config.json`'s `eos_token_id`, whose sampling
//! settings are the defaults for fields a request leaves out. Prints `listening on
//! http://HOST:PORT` to stderr once it accepts requests; Ctrl-C or SIGTERM stops accepting, lets
//! the requests in flight finish, and exits. See docs/serving.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qwen::backend::{device, inference_dtype, Backend};
use qwen::chat::{find_tokenizer, GenerationDefaults};
use qwen_model::SamplingConfig;
use qwen_serve::{ChatFormat, Engine, EngineConfig, ServerConfig};
use qwen_tokenizer::{ChatMl, Normalization, Tokenizer};

/// Serves a Qwen checkpoint over the OpenAI API.
#[derive(Parser)]
#[command(name = "serve")]
struct Args {
    /// Folder with config.json and safetensors weights (and usually the tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// `tokenizer.json` or `.tiktoken` file (default: the one in --model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Rows decoded together at most.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting for a row at most (more get 429).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// `max_tokens` a request may ask for at most (default: the model's context).
    #[arg(long)]
    max_tokens_limit: Option<usize>,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long)]
    api_key: Option<String>,
    /// The model id in /v1/models and replies (default: the folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// How the projection and head weights are kept in memory: f32, bf16, f16 or q8_0 (on the CPU
    /// all four in HF's row order, multiplied by our kernel; f32 with --adapter, and on a GPU,
    /// burn's tensors; a GGUF tensor already in that type is kept as stored).
    #[arg(long, default_value = "f32")]
    dtype: qwen_model::WeightDtype,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tok_path = match &args.tokenizer {
        Some(p) => p.clone(),
        None => find_tokenizer(&args.model)?,
    };
    let tokenizer = Tokenizer::from_file(&tok_path)
        .with_context(|| format!("loading {}", tok_path.display()))?
        .with_normalization(Normalization::Nfc);
    let model = qwen_model::load_as::<Backend>(&args.model, &device(), inference_dtype(args.dtype, false))
        .with_context(|| format!("loading {}", args.model.display()))?;
    let context = model.config.max_position_embeddings;

    let mut stop_ids = ChatMl::new(&tokenizer).map(|c| c.stop_ids()).unwrap_or_default();
    let mut sampling = SamplingConfig { temperature: 1.0, ..SamplingConfig::default() };
    let gen = args.model.join("generation_config.json");
    if gen.is_file() {
        let d = GenerationDefaults::from_file(&gen)?;
        for id in d.stop_ids {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        sampling = d.sampling.unwrap_or(sampling);
    }
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        let dir = args.model.canonicalize().unwrap_or_else(|_| args.model.clone());
        dir.file_name().map_or_else(|| "qwen".into(), |n| n.to_string_lossy().into_owned())
    });
    let config = ServerConfig {
        max_tokens_limit: args.max_tokens_limit.unwrap_or(context),
        api_key: args.api_key.clone(),
        sampling,
        chat_format: ChatFormat::from_model_dir(&args.model)?,
        ..ServerConfig::new(name, context)
    };
    let engine = Engine::start(
        model,
        tokenizer.clone(),
        EngineConfig { max_batch: args.max_batch, max_queue: args.max_queue, stop_ids },
    );
    let app = qwen_serve::router(engine.clone(), tokenizer, config);

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (listener, addr) = qwen_serve::server::bind(SocketAddr::new(args.host, args.port)).await?;
        eprintln!("listening on http://{addr}");
        qwen_serve::serve(listener, app, qwen_serve::server::shutdown_signal()).await
    })?;
    eprintln!("shutting down: finishing the requests in flight");
    engine.shutdown();
    Ok(())
}
