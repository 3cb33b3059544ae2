//! `apl experiment`: run the active-learning comparison of arXiv 2402.08114 from a preset,
//! with single fields overridable from the command line, resumable in its output directory.
//!
//! ```text
//! apl experiment --preset imdb-cpu --acquisition random,certainty --seeds 2 --out runs/cpu
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::ModelArgs;
use crate::assets;
use crate::experiment::config::ExperimentConfig;
use crate::experiment::run::PhaseRecord;
use crate::experiment::setup::{JudgeEnv, Setup};
use crate::experiment::{Observer, report, run_experiment};
use apl_engine::device::{parse_device, parse_dtype};
use apl_engine::model::Checkpoint;
use apl_shared::settings::{Backend, JudgeTask, Loss, PairLengths, RaterNoise, RemoteBackend, ServerKind, Trainable};
use apl_shared::{Acquisition, Labeller, Mode, Preset, Task};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Starting settings: imdb-paper (the paper's IMDB loop, for a GPU, with SmolLM2 and a
    /// naive-Bayes oracle unless --model / --oracle judge: the paper used gpt2-large and GPT-4),
    /// imdb-cpu (scaled for 2 cores), imdb-protocol (the PyTorch reference protocol).
    #[arg(long, default_value = "imdb-cpu")]
    pub preset: Preset,
    /// A JSON file of settings (the shape of a results directory's config.json), applied over
    /// the preset; the flags below are applied last.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Acquisition functions, comma-separated: random, certainty, uncertainty, entropy, hybrid.
    #[arg(long, value_delimiter = ',')]
    pub acquisition: Option<Vec<Acquisition>>,
    /// Labelled-set sizes, comma-separated (e.g. 128,256,512,768).
    #[arg(long, value_delimiter = ',')]
    pub schedule: Option<Vec<usize>>,
    /// Seeds: a count N (seeds 0..N), a list (1,3) or a range (2..4).
    #[arg(long)]
    pub seeds: Option<String>,
    /// imdb, summarize (TL;DR; `tldr` also accepted) or generic (a prompt file; `prompts`).
    #[arg(long)]
    pub task: Option<Task>,
    /// Data file for the task (IMDB CSV, TL;DR JSONL/CSV, prompt JSONL/CSV).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Who labels pairs and judges evaluations: sentiment, length, judge (the LLM judge of
    /// `settings.judge`, set with --config) or local_judge.
    #[arg(long)]
    pub oracle: Option<Labeller>,
    /// reset (the paper), continue, or online.
    #[arg(long)]
    pub mode: Option<Mode>,
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    /// Also evaluate the untrained policy (phase 0).
    #[arg(long)]
    pub eval_initial: bool,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub beta: Option<f64>,
    /// dpo, ipo, or cdpo:EPSILON (label smoothing).
    #[arg(long)]
    pub loss: Option<Loss>,
    #[arg(long)]
    pub pairs_per_step: Option<usize>,
    /// Train only the top K layers (0 = all parameters).
    #[arg(long)]
    pub top_layers: Option<usize>,
    /// Train LoRA adapters of this rank instead (alpha and targets below).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj,c_attn,query_key_value")]
    pub lora_targets: Vec<String>,
    /// Use the reference code's sliding-window entropy estimate. The paper's entropy and
    /// hybrid columns were made with it; it mostly averages other prompts' samples, so it
    /// selects close to randomly. Without it, each prompt's own samples are averaged.
    #[arg(long)]
    pub windowed_entropy: bool,
    /// independent (each completion of a pair draws its length, the reference's way) or
    /// matched (one length for both).
    #[arg(long)]
    pub pair_lengths: Option<PairLengths>,
    /// Stop with an error when the prompt pool runs out, instead of starting another pass.
    #[arg(long)]
    pub no_cycle_prompts: bool,
    /// Label with a simulated noisy rater: Bradley-Terry choice from the oracle's scores at
    /// this temperature (sentiment: log-odds units; length: characters; 0 = the oracle's own
    /// choice).
    #[arg(long)]
    pub rater_temperature: Option<f64>,
    /// The simulated rater answers the other side with this probability (0 to 0.5).
    #[arg(long)]
    pub rater_flip: Option<f64>,
    /// IMDB: also judge with a second sentiment classifier trained on reviews the labeller
    /// never saw; both win-rates are reported.
    #[arg(long)]
    pub held_out_judge: bool,
    /// Sample and score on an inference server (OpenAI-compatible completions: vLLM, or
    /// llama-cpp-python's server) instead of this engine; training stays here, as LoRA (set
    /// --lora-rank) adapters the server loads by name. Needs --base-url and --served-model.
    #[arg(long)]
    pub remote: bool,
    /// The model server's API up to the version, e.g. http://127.0.0.1:8000/v1.
    #[arg(long, requires = "remote")]
    pub base_url: Option<String>,
    /// The base model's name on the server (the same weights as --model).
    #[arg(long, requires = "remote")]
    pub served_model: Option<String>,
    /// vllm or llama_cpp_python.
    #[arg(long, requires = "remote")]
    pub server: Option<ServerKind>,
    /// A second server for sampling the starting model (e.g. llama-cpp-python, which cannot
    /// load adapters); scoring stays on --base-url.
    #[arg(long, requires = "remote")]
    pub reference_base_url: Option<String>,
    #[arg(long, requires = "reference_base_url")]
    pub reference_server: Option<ServerKind>,
    /// Train each phase with this command instead of this engine's DPO, e.g. 'trl dpo
    /// --dataset_name {data} --model_name_or_path {base} --output_dir {out} --use_peft
    /// --lora_r {rank} --lora_alpha {alpha} --lora_target_modules {targets} --beta {beta}
    /// --learning_rate {lr} --num_train_epochs {epochs} --per_device_train_batch_size {batch}
    /// --seed {seed} --logging_steps 1 --disable_tqdm true --report_to none' (split into words
    /// here, no shell; needs --lora-rank).
    #[arg(long)]
    pub trainer_command: Option<String>,
    /// Results directory [default: experiments/PRESET].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the resolved settings as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Rewrite the reports (summary, paired comparison, plot) from the phases already in
    /// --out, without running anything.
    #[arg(long)]
    pub report_only: bool,
    /// A file of NAME=value lines where the LLM judge's API key is looked up after the
    /// environment.
    #[arg(long, env = "APL_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
}

/// `N` = 0..N, `a,b,c` = those seeds, `a..b` = a..b.
fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let num = |x: &str| -> Result<u64> {
        x.trim().parse().with_context(|| format!("--seeds {s:?}: {x:?} is not a whole number"))
    };
    Ok(if let Some((a, b)) = s.split_once("..") {
        (num(a)?..num(b)?).collect()
    } else if s.contains(',') {
        s.split(',').map(num).collect::<Result<_>>()?
    } else {
        (0..num(s)?).collect()
    })
}

/// The preset, then the config file, then the flags.
pub fn resolve(a: &Args) -> Result<ExperimentConfig> {
    let mut cfg = ExperimentConfig::preset(a.preset);
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut base = serde_json::to_value(&cfg)?;
        let over: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        merge(&mut base, crate::experiment::config::upgrade(over));
        cfg = serde_json::from_value(base).with_context(|| format!("{}: settings do not fit", path.display()))?;
    }
    if let Some(v) = &a.acquisition {
        cfg.acquisitions = v.clone();
    }
    if let Some(v) = &a.schedule {
        cfg.schedule = v.clone();
    }
    if let Some(s) = &a.seeds {
        cfg.seeds = parse_seeds(s)?;
    }
    let s = &mut cfg.settings;
    if let Some(t) = a.task {
        cfg.task.kind = t;
        if t == Task::Summarize {
            s.completion_tokens = (128, 128);
            s.exact_length = false;
        }
        // The LLM judge's criteria follow the task, unless a config chose others.
        if s.judge.task == JudgeTask::Imdb {
            s.judge.task = match t {
                Task::Imdb => JudgeTask::Imdb,
                Task::Summarize => JudgeTask::Summarize,
                Task::Generic => JudgeTask::Helpful,
            };
        }
    }
    if let Some(p) = &a.data {
        cfg.task.path = Some(p.clone());
    }
    if let Some(o) = a.oracle {
        s.labeller = o;
        s.eval.judge = o;
    }
    if let Some(m) = a.mode {
        s.mode = m;
    }
    if let Some(n) = a.eval_prompts {
        s.eval.prompts = n;
    }
    s.eval.initial |= a.eval_initial;
    if let Some(n) = a.epochs {
        s.train.epochs = n;
    }
    if let Some(lr) = a.lr {
        s.train.adam.lr = lr;
    }
    if let Some(b) = a.beta {
        s.train.beta = b;
    }
    if let Some(n) = a.pairs_per_step {
        s.train.pairs_per_step = n;
        s.train.micro_batch = s.train.micro_batch.min(n);
    }
    if let Some(l) = a.loss {
        s.train.loss = l;
    }
    match (a.top_layers, a.lora_rank) {
        (Some(_), Some(_)) => bail!("--top-layers and --lora-rank exclude each other"),
        (Some(0), None) => s.trainable = Trainable::All,
        (Some(k), None) => s.trainable = Trainable::TopLayers { k },
        (None, Some(r)) => {
            s.trainable = Trainable::Lora { rank: r, alpha: a.lora_alpha, targets: a.lora_targets.clone() }
        }
        (None, None) => {}
    }
    s.acquire.windowed_entropy_reference |= a.windowed_entropy;
    if let Some(p) = a.pair_lengths {
        s.acquire.pair_lengths = p;
    }
    if a.no_cycle_prompts {
        cfg.task.cycle_prompts = false;
    }
    if a.rater_temperature.is_some() || a.rater_flip.is_some() {
        let n = cfg.rater_noise.get_or_insert_with(|| RaterNoise { temperature: 0.0, ..Default::default() });
        if let Some(t) = a.rater_temperature {
            n.temperature = t;
        }
        if let Some(f) = a.rater_flip {
            n.flip = f;
        }
    }
    cfg.held_out_judge |= a.held_out_judge;
    if let Some(t) = &a.trainer_command {
        cfg.trainer_command = Some(t.clone());
    }
    if a.remote {
        let mut r = match &s.backend {
            Backend::Remote(r) => r.clone(),
            Backend::Local => RemoteBackend::default(),
        };
        r.base_url = a.base_url.clone().unwrap_or(r.base_url);
        r.model = a.served_model.clone().unwrap_or(r.model);
        r.server = a.server.unwrap_or(r.server);
        r.reference_base_url = a.reference_base_url.clone().or(r.reference_base_url);
        r.reference_server = a.reference_server.or(r.reference_server);
        s.backend = Backend::Remote(r);
    }
    if let Some(m) = &a.model.model {
        cfg.model = Some(m.clone());
    }
    if let Some(p) = a.model.products {
        cfg.products = p;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Overlays `over` onto `base`, object by object.
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// Two progress bars: phases overall, and the stage under way.
struct Bars {
    phases: ProgressBar,
    stage: ProgressBar,
}

impl Observer for Bars {
    fn begin(&self, total: usize, done: usize) {
        self.phases.set_length(total as u64);
        self.phases.set_position(done as u64);
    }

    fn stage(&self, run: &str, stage: &str, done: usize, total: usize) {
        self.stage.set_length(total as u64);
        self.stage.set_position(done as u64);
        self.stage.set_message(format!("{run}: {stage}"));
    }

    fn phase(&self, r: &PhaseRecord) {
        self.phases.inc(1);
        let line = format!(
            "{:<11} seed {} phase {} (m = {:>4}): win-rate {:.3} ± {:.3}  [{} labels, loss {:.3}, {:.0} s]",
            r.acquisition,
            r.seed,
            r.phase,
            r.m,
            r.win_rate.win_rate,
            r.win_rate.stderr,
            r.labels,
            r.train.loss_curve.last().copied().unwrap_or(f64::NAN),
            r.timings.total
        );
        // A hidden bar (output not a terminal, e.g. a log file) would swallow the line.
        if self.phases.is_hidden() { eprintln!("{line}") } else { self.phases.println(line) }
    }
}

pub fn run(a: Args) -> Result<()> {
    let cfg = resolve(&a)?;
    if a.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let out =
        a.out.clone().unwrap_or_else(|| PathBuf::from("experiments").join(cfg.preset.map_or("custom", |p| p.name())));
    if a.report_only {
        let records = crate::experiment::finished(&cfg, &out)?;
        anyhow::ensure!(!records.is_empty(), "{} holds no finished phase of these arms and seeds", out.display());
        crate::experiment::write_reports(&cfg, &records, &out)?;
        print_summary(&records, &out)?;
        return Ok(());
    }
    let cache = a.model.cache.dir();
    let model_path = match &cfg.model {
        Some(p) => p.clone(),
        None => assets::ensure(&assets::SMOLLM2, &cache)?,
    };
    let imdb_csv = if cfg.task.kind == Task::Imdb && cfg.task.path.is_none() {
        Some(assets::ensure(&assets::IMDB, &cache)?)
    } else {
        None
    };
    let device = parse_device(&a.model.device)?;
    if device.is_cpu() {
        super::set_up_cpu(&cache, cfg.model.is_none(), cfg.products);
    }
    // The record says what ran: bf16 products only where they do.
    if cfg.products != apl_engine::model::cpu::amx::products() {
        bail!("products bf16 needs a CPU with AMX (Intel Sapphire Rapids or later, Linux); this run would be f32");
    }
    let base = Checkpoint::load(&model_path, parse_dtype(&a.model.dtype)?, &device)?;
    let t = std::time::Instant::now();
    let env = JudgeEnv { log: Some(out.join("judge.jsonl")), secrets_file: a.secrets_file.clone() };
    let setup = Setup::build(&cfg, base, imdb_csv.as_deref(), &env)?;
    if let Some(r) = &setup.held_out_report {
        eprintln!(
            "held-out judge {}: accuracy {:.3} on {} full reviews, {:.3} on their first 60 words ({} training reviews)",
            r.name, r.accuracy_full_reviews, r.test_reviews, r.accuracy_60_words, r.train_reviews
        );
    }
    if let Some(r) = &setup.oracle_report {
        eprintln!(
            "oracle {}: held-out accuracy {:.3} on {} full reviews, {:.3} on their first 60 words ({} features, {:.1} s)",
            r.name, r.accuracy_full_reviews, r.test_reviews, r.accuracy_60_words, r.vocabulary, r.seconds
        );
    }
    eprintln!(
        "{} evaluation prompts, {} pool prompts ({} repeated texts left out); results in {} (setup {:.1} s)",
        setup.eval.len(),
        setup.pool.len(),
        setup.duplicates,
        out.display(),
        t.elapsed().as_secs_f64()
    );
    let mp = MultiProgress::new();
    let phases = mp.add(ProgressBar::new(0));
    phases.set_style(
        ProgressStyle::with_template("phases [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")?
            .progress_chars("=> "),
    );
    let stage = mp.add(ProgressBar::new(0));
    stage.set_style(ProgressStyle::with_template("  {msg:<40} [{bar:25}] {pos}/{len}")?.progress_chars("=> "));
    let bars = Bars { phases, stage };
    let t = std::time::Instant::now();
    let records = run_experiment(&cfg, &setup, &out, &bars)?;
    bars.stage.finish_and_clear();
    bars.phases.finish();
    print_summary(&records, &out)?;
    println!("wall time {:.0} s; reports in {}", t.elapsed().as_secs_f64(), out.display());
    Ok(())
}

/// The summary tables on standard output.
fn print_summary(records: &[crate::experiment::run::PhaseRecord], out: &std::path::Path) -> Result<()> {
    let trained: Vec<_> = records.iter().filter(|r| r.phase > 0).cloned().collect();
    let rows = report::summarize(&trained);
    let cmp = report::compare(&crate::experiment::outcomes(out, &trained)?);
    println!("\n{}", report::summary_markdown(&rows, &cmp, None));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_seeds;

    #[test]
    fn seeds_as_count_list_or_range() {
        assert_eq!(parse_seeds("3").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds("1,4").unwrap(), vec![1, 4]);
        assert_eq!(parse_seeds("2..4").unwrap(), vec![2, 3]);
        let err = parse_seeds("1,x").unwrap_err().to_string();
        assert!(err.contains("\"x\" is not a whole number"), "{err}");
    }
}
