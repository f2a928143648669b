//! Streams a completion (or a ChatML reply) from a checkpoint.
//!
//! ```text
//! cargo run --release --example generate -- --model DIR --tokenizer vocab/qwen.tiktoken --chat --prompt "Hi"
//! cargo run --release --example generate -- --model qwen2.5-0.5b-instruct-q8_0.gguf --prompt "Hi"
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use qwen::backend::{device, inference_dtype, Backend};
use qwen_model::gguf::GgufFile;
use qwen_model::{GenerateConfig, SamplingConfig, WeightDtype};
use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
use qwen_tokenizer::{AllowedSpecial, ChatMl, Normalization, StreamDecoder, Tokenizer, DEFAULT_SYSTEM};

/// Generates text with a Qwen checkpoint, streaming it to stdout; tokens/s go to stderr.
#[derive(Parser)]
#[command(name = "generate")]
struct Args {
    /// Folder with config.json and safetensors weights, or a llama.cpp GGUF file (Qwen2/Qwen3).
    #[arg(long)]
    model: PathBuf,
    /// How the projection and head weights are kept in memory: f32, bf16, f16 or q8_0 (on the CPU
    /// all four in HF's row order, multiplied by our kernel; f32 with --adapter, and on a GPU,
    /// burn's tensors; a GGUF tensor already in that type is kept as stored).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// A LoRA adapter for the model (PEFT's layout: adapter_config.json, adapter_model.safetensors),
    /// merged into the weights before generating.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// `.tiktoken` (Qwen-1) or `tokenizer.json` (Qwen2) file; default for a GGUF model: the
    /// tokenizer in its metadata.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Render the prompt as a chat turn (with `--system`): the model folder's (or GGUF file's) chat
    /// template when it has one (as transformers' `apply_chat_template` does), else Qwen-1 ChatML;
    /// stop at <|im_end|>.
    #[arg(long)]
    chat: bool,
    /// The system prompt of `--chat` (default: the template's own; ChatML's "You are a helpful assistant.").
    #[arg(long)]
    system: Option<String>,
    /// Qwen3's `enable_thinking` for `--chat` templates (false: answer without a <think> block).
    #[arg(long)]
    enable_thinking: Option<bool>,
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gguf = match qwen_model::load_gguf::is_gguf(&args.model) {
        true => Some(GgufFile::open(&args.model)?),
        false => None,
    };
    let tok = match (&args.tokenizer, &gguf) {
        (Some(path), _) => Tokenizer::from_file(path).with_context(|| format!("loading {}", path.display()))?,
        (None, Some(file)) => {
            qwen::gguf::tokenizer(file).with_context(|| format!("the tokenizer of {}", args.model.display()))?
        }
        (None, None) => anyhow::bail!("--tokenizer is needed unless --model is a GGUF file"),
    }
    .with_normalization(Normalization::Nfc);
    // An adapter is merged into burn's f32 tensors; otherwise f32 is the CPU's fastest f32.
    let dtype = inference_dtype(args.dtype, args.adapter.is_some());
    let model = match &gguf {
        Some(file) => qwen_model::load_gguf::load_gguf_file_as::<Backend>(file, &device(), dtype),
        None => qwen_model::load_as::<Backend>(&args.model, &device(), dtype),
    }
    .with_context(|| format!("loading {}", args.model.display()))?;
    if args.adapter.is_some() && args.dtype != WeightDtype::F32 {
        anyhow::bail!("--adapter is merged into f32 weights: use --dtype f32");
    }
    let model = match &args.adapter {
        Some(dir) => {
            model.load_adapter(dir).with_context(|| format!("loading the adapter {}", dir.display()))?.merged()
        }
        None => model,
    };
    let (prompt, mut stop_ids) = if args.chat {
        let chat = ChatMl::new(&tok)?;
        let template = match &gguf {
            Some(file) => qwen::gguf::chat_template(file)?,
            None => ChatTemplate::from_model_dir(&args.model)?,
        };
        let ids = match template {
            Some(template) => {
                let mut messages = Vec::new();
                if let Some(system) = &args.system {
                    messages.push(serde_json::json!({"role": "system", "content": system}));
                }
                messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
                let mut options = RenderOptions::generation();
                options.enable_thinking = args.enable_thinking;
                template.encode(&tok, &messages, &options)?.ids
            }
            None => {
                let system = args.system.as_deref().unwrap_or(DEFAULT_SYSTEM);
                chat.make_context(system, &[] as &[(String, String)], &args.prompt, 6144)?.ids
            }
        };
        (ids, chat.stop_ids())
    } else {
        (tok.encode(&args.prompt, &AllowedSpecial::None)?, Vec::new())
    };
    if let Some(eot) = tok.specials().id("<|endoftext|>") {
        stop_ids.push(eot);
    }
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        stop_ids: stop_ids.clone(),
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
    };
    if !args.chat {
        print!("{}", args.prompt);
    }
    let mut stream = StreamDecoder::new(&tok);
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut first = None;
    let new = model.generate(&prompt, &config, |t| {
        first.get_or_insert_with(Instant::now);
        if !stop_ids.contains(&t) {
            if let Ok(text) = stream.push(t) {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        }
        true
    })?;
    writeln!(stdout, "{}", stream.finish())?;
    let total = start.elapsed().as_secs_f64();
    let prefill = first.map_or(total, |f| (f - start).as_secs_f64());
    let decode_tokens = new.len().saturating_sub(1);
    eprintln!(
        "[{}] prompt {} tokens, generated {} tokens; prefill {:.1} tokens/s, decode {:.1} tokens/s",
        qwen::backend::name(),
        prompt.len(),
        new.len(),
        prompt.len() as f64 / prefill.max(1e-9),
        decode_tokens as f64 / (total - prefill).max(1e-9),
    );
    Ok(())
}
