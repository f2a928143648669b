//! [`Progress`]: a [`RunObserver`] for command-line programs (feature `progress`). On a terminal
//! it draws an indicatif bar with the last step's loss, rate, gradient norm and tokens/s; when
//! stderr is not a terminal (a log file, CI) it prints a plain line every 30 s instead. Either way
//! every evaluation, the corpus statistics and the run's shape are printed as lines on stderr.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use qwen_data::CorpusReport;

use crate::run::{EvalRecord, RunObserver, RunStart, StepRecord};

/// Progress on stderr; see the module docs.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
    /// Seconds between plain lines when no bar is drawn.
    pub plain_every: Duration,
}

impl Default for Progress {
    fn default() -> Self {
        Self { bar: None, last_line: Instant::now(), plain_every: Duration::from_secs(30) }
    }
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Prints `line` on stderr without tearing the bar.
    fn line(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
        self.last_line = Instant::now();
    }
}

impl RunObserver for Progress {
    fn corpus(&mut self, r: &CorpusReport) {
        self.line(&format!(
            "documents: {} read ({:?}); quality filter kept {} (removed {:?}); dedup removed {:?}",
            r.mixture.total, r.mixture.per_source, r.filter.kept, r.filter.removed, r.dedup
        ));
        self.line(&format!(
            "split: {} training documents ({:.2} MB), {} held out ({:.2} MB)",
            r.train_documents,
            r.train_bytes as f64 / 1e6,
            r.heldout_documents,
            r.heldout_bytes as f64 / 1e6
        ));
        self.line(&format!("BPE: {} ids ({} specials) trained in {:.1}s", r.vocab_size, r.specials, r.bpe_seconds));
        self.line(&format!(
            "packed: {} training tokens, {} held-out tokens ({:.1}s)",
            r.train_tokens, r.heldout_tokens, r.pack_seconds
        ));
    }

    fn started(&mut self, s: &RunStart) {
        if let Some(state) = s.resumed {
            self.line(&format!("resumed at step {} (epoch {}, window {})", s.step, state.epoch, state.position));
        }
        self.line(&format!(
            "model: {}, {} parameters ({} in embeddings and head); S = {}, {} sequences x {} micro-batches x {} \
             replicas per step, {} steps, peak lr {:.1e}; {} training windows of {}+1",
            s.model,
            s.params,
            s.embedding_params,
            s.seq_len,
            s.batch,
            s.accum,
            s.devices,
            s.total_steps,
            s.peak_lr,
            s.windows_per_epoch,
            s.seq_len
        ));
        self.line(&format!(
            "held-out at step {}: loss {:.4}, perplexity {:.2} ({} tokens)",
            s.step, s.heldout.loss, s.heldout.perplexity, s.heldout.tokens
        ));
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(s.total_steps).with_position(s.step);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bar = Some(bar);
        }
    }

    fn step(&mut self, r: &StepRecord, eval: Option<&EvalRecord>) {
        let msg = format!("loss {:.3} lr {:.2e} gnorm {:.2} {:.0} tok/s", r.loss, r.lr, r.grad_norm, r.tokens_per_s);
        if let Some(bar) = &self.bar {
            bar.set_position(r.step);
            bar.set_message(msg.clone());
        }
        if let Some(e) = eval {
            self.line(&format!(
                "step {:>5}: {msg}; held-out loss {:.4} ppl {:.2}",
                r.step, e.heldout_loss, e.heldout_ppl
            ));
        } else if self.bar.is_none() && self.last_line.elapsed() > self.plain_every {
            self.line(&format!("step {:>5}: {msg}", r.step));
        }
    }

    fn finished(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
