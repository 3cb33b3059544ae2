//! The domain's vocabulary: every name that travels between the engine, the server, the
//! database and the browser is a variant of one of these enums.
//!
//! A name is spelled once, by the variant (snake_case through serde's `rename_all`; strum's
//! `IntoStaticStr` derives the same spelling, and a test checks the two agree for every
//! variant). `name()`, `Display`, `FromStr` (whose error lists the allowed names, as serde's
//! does at the JSON boundary) and, with the `sqlx` feature, the TEXT columns they are stored in
//! all come from that one spelling, so no crate compares these names as strings.

use serde::{Deserialize, Serialize};

/// A name that is not in a vocabulary: says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {given:?} is not one of {allowed}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    /// The allowed names, comma-separated.
    pub allowed: String,
}

/// What every vocabulary enum offers (see [`vocabulary!`]).
pub trait Vocabulary: Copy + Sized + 'static {
    /// What the names are, for error messages ("acquisition function").
    const WHAT: &'static str;
    /// Every variant, in declaration order.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    /// The variant called `name` (surrounding blanks and case ignored; serde's aliases, the
    /// older spellings, accepted too).
    fn parse(name: &str) -> Result<Self, UnknownName>
    where
        Self: serde::de::DeserializeOwned,
    {
        let wanted = serde_json::Value::String(name.trim().to_ascii_lowercase());
        serde_json::from_value(wanted).map_err(|_| UnknownName {
            what: Self::WHAT,
            given: name.to_string(),
            allowed: Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Declares a vocabulary enum: serde and strum spell its variants in snake_case (or the case
/// given after the description); it gets
/// `name()`, `ALL`, `Display`, `FromStr`, `TryFrom<String>` and (feature `sqlx`) TEXT column
/// mapping, and (feature `openapi`) a schema.
macro_rules! vocabulary {
    ($what:literal; $(#[$meta:meta])* pub enum $name:ident { $($body:tt)* }) => {
        vocabulary! { $what, "snake_case"; $(#[$meta])* pub enum $name { $($body)* } }
    };
    (
        $what:literal, $case:tt;
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            strum::IntoStaticStr,
        )]
        #[serde(rename_all = $case)]
        #[strum(serialize_all = $case)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name { $($(#[$vmeta])* $variant),* }

        impl Vocabulary for $name {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &[$(Self::$variant),*];
            fn name(self) -> &'static str {
                self.into()
            }
        }

        impl $name {
            /// The name on the wire, in the database and in files.
            pub fn name(self) -> &'static str {
                <Self as Vocabulary>::name(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                <Self as Vocabulary>::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownName;
            fn try_from(s: String) -> Result<Self, UnknownName> {
                s.parse()
            }
        }

        #[cfg(feature = "sqlx")]
        crate::sql::text_column!($name);
        #[cfg(feature = "rusqlite")]
        crate::lite::text_column!($name);
    };
}
pub(crate) use vocabulary;

vocabulary! {
    "acquisition function";
    /// How a round picks the pairs worth a label (arXiv 2402.08114).
    pub enum Acquisition {
        /// One pair per prompt from the current policy.
        Random,
        /// Over-generate pairs, keep the largest implicit-reward margins |r_a - r_b|.
        Certainty,
        /// Over-generate pairs, keep the smallest margins.
        Uncertainty,
        /// Over-sample prompts, keep those with the highest predictive entropy.
        Entropy,
        /// Entropy picks prompts, then certainty picks their pairs.
        Hybrid,
    }
}

impl Acquisition {
    /// A phrase for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Certainty => "preference certainty",
            Self::Uncertainty => "preference uncertainty",
            Self::Entropy => "predictive entropy",
            Self::Hybrid => "hybrid (entropy, then certainty)",
        }
    }
}

vocabulary! {
    "labeller";
    /// Who labels pairs (and who judges evaluations, for the automatic ones).
    pub enum Labeller {
        /// Human raters through the rater workspace.
        Raters,
        /// The naive-Bayes IMDB sentiment oracle.
        Sentiment,
        /// Prefers the longer completion (tests and smoke runs).
        Length,
        /// The LLM judge of the settings' `judge` over an OpenAI-compatible API.
        Judge,
        /// The starting model itself, comparing its log-probabilities of answering A or B with
        /// the judge prompt of `judge.task`.
        LocalJudge,
    }
}

impl Labeller {
    /// Whether it labels without people (an oracle or a judge).
    pub fn is_automatic(self) -> bool {
        self != Self::Raters
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Raters => "human raters",
            Self::Sentiment => "IMDB sentiment classifier",
            Self::Length => "longer is better (testing)",
            Self::Judge => "LLM judge (API)",
            Self::LocalJudge => "the starting model as judge",
        }
    }
}

vocabulary! {
    "label source";
    /// Which labels make a training preference.
    pub enum LabelSource {
        Human,
        Judge,
        /// Human votes where a pair has any, else judge labels.
        HumanThenJudge,
    }
}

vocabulary! {
    "job kind";
    /// What a job of the model worker does.
    pub enum JobKind {
        /// Acquire a round of pairs with the current policy.
        Generate,
        /// An automatic labeller labels the pairs it has not judged.
        Label,
        /// DPO on every labelled pair.
        Train,
        /// Win-rate of a checkpoint against the starting model.
        Evaluate,
        /// All four (with human raters: acquisition, then waiting for their labels).
        Round,
        /// With human raters, once a round is labelled: train on the labels, evaluate, and
        /// acquire the next round with the new policy (what auto-continue starts by itself).
        Continue,
    }
}

impl JobKind {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Round => "Round: acquire, label, train, evaluate",
            Self::Generate => "Acquire pairs only",
            Self::Label => "Label with the automatic labeller",
            Self::Train => "Train (DPO) on the labels",
            Self::Evaluate => "Evaluate the newest checkpoint",
            Self::Continue => "Continue: train on the raters' labels, evaluate, acquire the next round",
        }
    }

    /// Whether the job acquires pairs (and so takes a pair count and an acquisition function).
    pub fn acquires(self) -> bool {
        matches!(self, Self::Round | Self::Generate | Self::Continue)
    }
}

vocabulary! {
    "job state";
    /// Where a job is in its life.
    pub enum JobState {
        Queued,
        Running,
        Done,
        Failed,
        Cancelled,
    }
}

impl JobState {
    /// Done, failed or cancelled: nothing will change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

vocabulary! {
    "choice";
    /// A human label as stored, in A/B terms (raters answer in screen terms, [`crate::RaterChoice`]).
    pub enum Choice {
        A,
        B,
        Tie,
        BothBad,
        Skip,
    }
}

vocabulary! {
    "preference";
    /// What an oracle or judge decided about (A, B); also how its label is stored.
    pub enum Preference {
        A,
        B,
        /// Judged equal (a judge asked in both orders that disagreed with itself, when
        /// configured so): dropped from training, half a win in win-rates.
        Tie,
        /// No usable answer: dropped from training, a tie in win-rates.
        #[serde(rename = "none", alias = "no_decision")]
        #[strum(serialize = "none")]
        NoDecision,
    }
}

vocabulary! {
    "side";
    /// One of the two completions of a pair.
    pub enum Side {
        A,
        B,
    }
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

vocabulary! {
    "pair kind";
    /// What a pair is for.
    pub enum PairKind {
        /// Acquired or imported, labelled by raters or a judge, trained on.
        Train,
        /// With a known answer, to score raters.
        Gold,
    }
}

vocabulary! {
    "split";
    /// Which prompts a prompt belongs to.
    pub enum Split {
        /// Acquisition draws from these.
        Train,
        /// Held out for evaluation.
        Eval,
    }
}

vocabulary! {
    "task";
    /// What a project or an experiment is about.
    pub enum Task {
        /// IMDB sentiment continuation: review openings, the sentiment oracle, baseline = the
        /// starting model's samples.
        Imdb,
        /// Summarisation (TL;DR): posts ending "TL;DR:", baseline = the reference summaries.
        #[serde(alias = "tldr")]
        Summarize,
        /// Any prompts; baseline = the starting model's samples.
        #[serde(alias = "prompts")]
        Generic,
    }
}

impl Task {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Imdb => "IMDB sentiment continuation",
            Self::Summarize => "Summarisation (TL;DR)",
            Self::Generic => "Generic prompts",
        }
    }

    /// What raters are asked to judge on a new project of this task: the criterion the task's
    /// own oracle and judge apply, so people and machines answer the same question.
    pub fn guidelines(self) -> &'static str {
        match self {
            Self::Imdb => {
                "Each text continues the opening of a movie review. Pick the continuation that is more \
                 positive about the movie (the more positive sentiment), as long as it still reads as \
                 fluent English. If both are equally positive, or neither makes sense, say so."
            }
            Self::Summarize => {
                "Each text summarises the post above it. Pick the summary that gives the post's most \
                 important points more accurately and concisely, without details that do not matter. \
                 If both are equally good, or both are wrong, say so."
            }
            Self::Generic => {
                "Pick the response that answers the prompt more helpfully: correct, relevant and clear. \
                 A response that is harmful, offensive or unsafe loses to one that is not. If both are \
                 equally good, or both are bad, say so."
            }
        }
    }
}

vocabulary! {
    "prompt file format";
    /// The file formats prompts are imported from.
    pub enum PromptFormat {
        /// One JSON object per line: `{"prompt": ..., "reference": ...}`.
        Jsonl,
        /// A header row naming `prompt` (and optionally `reference`).
        Csv,
    }
}

vocabulary! {
    "pair file format";
    /// The file formats preference pairs are imported from.
    pub enum PairFormat {
        /// TRL's DPO JSONL: `{prompt, chosen, rejected}` per line.
        Trl,
    }
}

vocabulary! {
    "outcome";
    /// How the policy's sample fared against the baseline's on one evaluation prompt.
    pub enum Outcome {
        Win,
        Tie,
        Loss,
    }
}

impl Outcome {
    /// From a judgement of (policy as A, baseline as B).
    pub fn from_preference(p: Preference) -> Self {
        match p {
            Preference::A => Self::Win,
            Preference::B => Self::Loss,
            Preference::Tie | Preference::NoDecision => Self::Tie,
        }
    }

    /// 1 for a win, 1/2 for a tie, 0 for a loss.
    pub fn score(self) -> f64 {
        match self {
            Self::Win => 1.0,
            Self::Tie => 0.5,
            Self::Loss => 0.0,
        }
    }
}

vocabulary! {
    "mode";
    /// What happens to the policy between rounds.
    pub enum Mode {
        /// The paper: back to the starting model and a fresh optimiser, train on all labels.
        Reset,
        /// Keep the weights, fresh optimiser, train on all labels.
        Continue,
        /// Keep the weights, one pass over the newest round's pairs only.
        Online,
    }
}

vocabulary! {
    "preset", "kebab-case";
    /// Named settings of the learning loop (see `LoopSettings::preset`).
    pub enum Preset {
        /// The paper's IMDB loop (for a GPU), with this workbench's model and oracle unless
        /// given: see [`Preset::fidelity`].
        ImdbPaper,
        /// Scaled so the four-way comparison fits in an hour on 2 CPU cores.
        ImdbCpu,
        /// The protocol the PyTorch reference timed on this CPU.
        ImdbProtocol,
    }
}

impl Preset {
    /// What the preset shares with arXiv 2402.08114's IMDB experiment and where it departs,
    /// for help texts and the head of every report.
    pub fn fidelity(self) -> &'static str {
        match self {
            Self::ImdbPaper => {
                "the paper's IMDB loop: prompts of 8-16 tokens, completions of 16-24, acquisition x32 pairs / x8 \
                 prompts / 8 entropy samples, beta 0.2, Adam lr 1e-6, 64 pairs per step, 50 epochs, reset each \
                 phase, schedule 128..768, 1024 evaluation prompts at T 0.25, 6 seeds. It differs in the model \
                 (SmolLM2-135M-Instruct unless --model; the paper: gpt2-large) and the oracle and judge (a \
                 naive-Bayes sentiment classifier unless --oracle judge; the paper: GPT-4), and the prompt pool \
                 is cycled when hybrid needs more prompts than it holds"
            }
            Self::ImdbCpu => {
                "scaled from the paper's IMDB loop to fit two CPU cores: 8-token prompts, 16-token completions, \
                 the top 2 layers trained at lr 5e-5 for 6 epochs, acquisition x4 pairs / x2 prompts / 2 entropy \
                 samples, 512 evaluation prompts; SmolLM2-135M-Instruct with a naive-Bayes sentiment oracle"
            }
            Self::ImdbProtocol => {
                "the small protocol timed against the PyTorch reference (../shared/peers/apl_reference): \
                 SmolLM2-135M-Instruct, naive-Bayes oracle, top 2 layers, 4 epochs, m = 64 then 128, 128 \
                 evaluation prompts"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde's and strum's spellings of every variant agree, and parsing gives it back.
    fn check<T: Vocabulary + Serialize + std::fmt::Debug + PartialEq + for<'de> Deserialize<'de>>() {
        for &v in T::ALL {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json.as_str(), Some(v.name()), "{v:?}");
            assert_eq!(T::parse(v.name()).unwrap(), v);
            assert_eq!(serde_json::from_value::<T>(json).unwrap(), v);
        }
    }

    #[test]
    fn serde_and_names_agree() {
        check::<Acquisition>();
        check::<Labeller>();
        check::<LabelSource>();
        check::<JobKind>();
        check::<JobState>();
        check::<Choice>();
        check::<Preference>();
        check::<Side>();
        check::<PairKind>();
        check::<Split>();
        check::<Task>();
        check::<Outcome>();
        check::<Mode>();
        check::<Preset>();
        check::<PromptFormat>();
        check::<PairFormat>();
        check::<crate::RaterChoice>();
        check::<crate::CycleStep>();
        check::<crate::NextStatus>();
        check::<crate::settings::JudgeTask>();
        check::<crate::settings::AnswerMode>();
        check::<crate::settings::JudgeOrder>();
        check::<crate::settings::Disagreement>();
    }

    #[test]
    fn names_are_snake_case() {
        assert_eq!(Choice::BothBad.name(), "both_bad");
        assert_eq!(LabelSource::HumanThenJudge.to_string(), "human_then_judge");
        assert_eq!(Preference::NoDecision.name(), "none");
        assert_eq!(Preset::ImdbCpu.name(), "imdb-cpu");
    }

    #[test]
    fn unknown_names_list_the_allowed_ones() {
        let e = "certainly".parse::<Acquisition>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "acquisition function: \"certainly\" is not one of random, certainty, uncertainty, entropy, hybrid"
        );
        assert_eq!(" Certainty ".parse::<Acquisition>().unwrap(), Acquisition::Certainty);
        // serde refuses the same way at the JSON boundary, naming the allowed values.
        let e = serde_json::from_str::<JobKind>("\"train_it\"").unwrap_err().to_string();
        assert!(e.contains("generate") && e.contains("evaluate"), "{e}");
    }

    #[test]
    fn old_spellings_still_read() {
        assert_eq!(serde_json::from_str::<Preference>("\"no_decision\"").unwrap(), Preference::NoDecision);
        assert_eq!(serde_json::from_str::<Task>("\"tldr\"").unwrap(), Task::Summarize);
        assert_eq!(serde_json::from_str::<Task>("\"prompts\"").unwrap(), Task::Generic);
    }

    #[test]
    fn outcomes_score() {
        assert_eq!(Outcome::from_preference(Preference::NoDecision), Outcome::Tie);
        let total: f64 = [Outcome::Win, Outcome::Tie, Outcome::Loss].iter().map(|o| o.score()).sum();
        assert_eq!(total, 1.5);
    }
}
