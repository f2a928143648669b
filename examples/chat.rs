//! An interactive multi-turn chat in the terminal, on [`qwen::chat::Chat`].
//!
//! ```text
//! cargo run --release --example chat -- --model DIR [--system TEXT] [--enable-thinking false]
//! ```
//!
//! Type a message and press Enter; the reply streams as it is generated. `/reset` forgets the
//! conversation, `/system TEXT` sets the system prompt (and resets), `/quit` or Ctrl-D ends.
//! When stdin is not a terminal each line is one message (no prompts are printed), so
//! `printf 'hi\n' | chat --model DIR` works in scripts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qwen::backend::{device, inference_dtype, Backend};
use qwen::chat::{Chat, Flow, StopReason};
use qwen_model::{SamplingConfig, WeightDtype};

/// Chats with a model folder (config.json, safetensors, tokenizer.json or a .tiktoken file).
#[derive(Parser)]
#[command(name = "chat")]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter for the model (PEFT's layout: adapter_config.json, adapter_model.safetensors),
    /// merged into the weights.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The system prompt (default: the chat template's own; Qwen-1 ChatML's "You are a helpful
    /// assistant.").
    #[arg(long)]
    system: Option<String>,
    /// Qwen3's `enable_thinking` (false: replies start with an empty <think> block and answer at
    /// once; default: the template's, which thinks).
    #[arg(long)]
    enable_thinking: Option<bool>,
    /// Most tokens per reply (default: generation_config.json's `max_new_tokens`, else 512).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// 0 = greedy (the default, unless generation_config.json says otherwise and this is unset).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the projection and head weights are kept in memory: f32, bf16, f16 or q8_0 (on the CPU
    /// all four in HF's row order, multiplied by our kernel; f32 with --adapter, and on a GPU,
    /// burn's tensors).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.adapter.is_some() && args.dtype != WeightDtype::F32 {
        anyhow::bail!("--adapter is merged into f32 weights: use --dtype f32");
    }
    // An adapter is merged into burn's f32 tensors; otherwise f32 is the CPU's fastest f32.
    let dtype = inference_dtype(args.dtype, args.adapter.is_some());
    let mut chat = Chat::<Backend>::load_as(&args.model, &device(), dtype)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if let Some(dir) = &args.adapter {
        chat = chat.with_adapter(dir).with_context(|| format!("loading the adapter {}", dir.display()))?;
    }
    if let Some(n) = args.max_new_tokens {
        chat = chat.with_max_new_tokens(n);
    }
    if let Some(t) = args.temperature {
        chat = chat.with_sampling(SamplingConfig {
            temperature: t,
            top_p: args.top_p,
            seed: args.seed,
            ..Default::default()
        });
    }
    if let Some(s) = &args.system {
        chat.set_system(s.clone());
    }
    if let Some(enable) = args.enable_thinking {
        chat = chat.with_thinking(enable);
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chatting with {} ({}); /reset, /system TEXT, /quit", args.model.display(), qwen::backend::name());
    }
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim_end_matches('\r');
        match line.split_once(' ').map_or((line, ""), |(c, rest)| (c, rest)) {
            ("/quit", _) => break,
            ("/reset", _) => {
                chat.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            ("/system", text) => {
                chat.set_system(text.to_string());
                chat.reset();
                eprintln!("(system prompt set; conversation cleared)");
                continue;
            }
            _ if line.trim().is_empty() => continue,
            _ => {}
        }
        let reply = chat.send(line, |piece| {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
            Flow::Continue
        });
        match reply {
            Ok(r) => {
                writeln!(out)?;
                if interactive {
                    let why = match r.stop {
                        StopReason::Stop(_) => "stop",
                        StopReason::Length => "length",
                        StopReason::Cancelled => "cancelled",
                    };
                    eprintln!("[{} prompt tokens, {} generated, {why}]", r.prompt_tokens, r.ids.len());
                }
            }
            // A message that does not fit is the user's to shorten: say so and keep chatting.
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}
