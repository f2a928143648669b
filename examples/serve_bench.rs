//! Load benchmark of the OpenAI server on the Qwen2.5-0.5B shape (random weights): N concurrent
//! streamed `/v1/completions` clients over loopback HTTP, each sending requests back to back;
//! aggregate output tokens/s and p50/p99 time to first token per concurrency, as JSON lines and a
//! table. `--soak-secs S` then keeps the largest concurrency running for S seconds and prints the
//! resident memory every 10 s (it must stay flat).
//!
//! ```text
//! cargo run --release --example serve_bench -- [--layers 24] [--streams 1,4,16] [--new-tokens 32]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qwen::backend::{device, Backend};
use qwen_model::{QwenConfigBuilder, QwenModel};
use qwen_serve::{Engine, EngineConfig, ServerConfig};
use qwen_tokenizer::Tokenizer;

#[derive(Parser)]
#[command(name = "serve_bench")]
struct Args {
    #[arg(long, default_value_t = 24)]
    layers: usize,
    /// Concurrent streams to measure, comma-separated.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    streams: Vec<usize>,
    /// Requests each stream sends, one after the other.
    #[arg(long, default_value_t = 3)]
    requests: usize,
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// `tokenizer.json` the engine decodes with.
    #[arg(long, default_value = "vocab/tokenizer.json")]
    tokenizer: String,
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
}

/// One streamed request: seconds to the first event and output tokens (from the usage chunk).
async fn one(addr: SocketAddr, prompt: &[u32], new_tokens: usize) -> anyhow::Result<(f64, usize)> {
    let body = serde_json::json!({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}});
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(conn);
    let request = hyper::Request::post("/v1/completions")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let mut response = sender.send_request(request).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    let (mut first, mut raw) = (None, String::new());
    while let Some(frame) = response.body_mut().frame().await {
        if let Ok(data) = frame?.into_data() {
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            raw.push_str(std::str::from_utf8(&data)?);
        }
    }
    connection.abort();
    let usage = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find_map(|v| v["usage"]["completion_tokens"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no usage chunk"))?;
    Ok((first.unwrap_or(0.0), usage as usize))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = QwenConfigBuilder::qwen2_5_0_5b().layers(args.layers).build()?;
    let context = config.max_position_embeddings;
    let model = QwenModel::<Backend>::random(config, 0.02, &device());
    let tokenizer = Tokenizer::from_file(&args.tokenizer)?;
    let max_batch = args.streams.iter().copied().max().unwrap_or(1);
    // No stop ids: every request runs to `new_tokens`, so each round does the same work.
    let engine = Engine::start(model, tokenizer.clone(), EngineConfig { max_batch, max_queue: 256, stop_ids: vec![] });
    let app = qwen_serve::router(engine, tokenizer, ServerConfig::new("bench", context));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (listener, addr) = qwen_serve::server::bind("127.0.0.1:0".parse()?).await?;
        tokio::spawn(qwen_serve::serve(listener, app, std::future::pending()));
        let prompt = |i: usize| -> Vec<u32> {
            (0..args.prompt_tokens as u32).map(|j| (j * 7919 + i as u32 * 104_729 + 13) % 151_000).collect()
        };
        one(addr, &prompt(0), 2).await?; // warm-up
        let mut table = Vec::new();
        for &n in &args.streams {
            let start = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|s| {
                    let (requests, new_tokens) = (args.requests, args.new_tokens);
                    let prompts: Vec<Vec<u32>> = (0..requests).map(|r| prompt(1 + s * requests + r)).collect();
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for p in &prompts {
                            out.push(one(addr, p, new_tokens).await?);
                        }
                        anyhow::Ok(out)
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.extend(t.await??);
            }
            let wall = start.elapsed().as_secs_f64();
            let tokens: usize = results.iter().map(|r| r.1).sum();
            let mut ttft: Vec<f64> = results.iter().map(|r| r.0).collect();
            ttft.sort_by(f64::total_cmp);
            let row = serde_json::json!({
                "impl": format!("qwen-rs/{}", qwen::backend::name()),
                "layers": args.layers, "streams": n, "requests": results.len(),
                "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                "output_tokens_per_s": tokens as f64 / wall,
                "ttft_p50_s": percentile(&ttft, 0.5), "ttft_p99_s": percentile(&ttft, 0.99),
                "wall_s": wall, "rss_mib": rss_mib(),
            });
            println!("{row}");
            table.push(row);
        }
        let one_stream = table[0]["output_tokens_per_s"].as_f64().unwrap_or(1.0);
        eprintln!("| streams | output tokens/s | vs 1 stream | TTFT p50 | TTFT p99 |");
        eprintln!("|---|---|---|---|---|");
        for r in &table {
            let tps = r["output_tokens_per_s"].as_f64().unwrap_or(0.0);
            eprintln!(
                "| {} | {tps:.1} | {:.2}x | {:.3} s | {:.3} s |",
                r["streams"],
                tps / one_stream,
                r["ttft_p50_s"].as_f64().unwrap_or(0.0),
                r["ttft_p99_s"].as_f64().unwrap_or(0.0)
            );
        }
        if args.soak_secs > 0 {
            let end = Instant::now() + Duration::from_secs(args.soak_secs);
            let tasks: Vec<_> = (0..max_batch)
                .map(|s| {
                    let p = prompt(10_000 + s);
                    let new_tokens = args.new_tokens;
                    tokio::spawn(async move {
                        let mut done = 0usize;
                        while Instant::now() < end {
                            done += one(addr, &p, new_tokens).await?.1;
                        }
                        anyhow::Ok(done)
                    })
                })
                .collect();
            let sampler = tokio::spawn(async move {
                let t = Instant::now();
                while Instant::now() < end {
                    eprintln!("soak {:>4.0} s: rss {:.0} MiB", t.elapsed().as_secs_f64(), rss_mib());
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            });
            let mut tokens = 0;
            for t in tasks {
                tokens += t.await??;
            }
            sampler.await?;
            println!("{}", serde_json::json!({"soak_s": args.soak_secs, "streams": max_batch, "tokens": tokens, "rss_mib": rss_mib()}));
        }
        anyhow::Ok(())
    })
}
