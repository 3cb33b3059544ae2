//! Where a project's learning cycle stands (`GET /api/projects/{id}/cycle`): the newest
//! round's step (acquiring, labelling, training, evaluating, done), its labelling progress
//! with raters (pairs complete, votes per pair, who is active, the raters' pace and the time
//! it gives), when auto-continue will take it on, and the one action an admin would take next.
//!
//! The server derives all of it from what is stored (rounds, pairs, labels, checkpoints,
//! evaluations, jobs), so the run tab's stepper is one request and shows the same thing after
//! a reload, on another admin's screen, or after a server restart.

use serde::{Deserialize, Serialize};

use crate::vocab::{JobKind, UnknownName, Vocabulary, vocabulary};

vocabulary! {
    "cycle step";
    /// The steps of one round of the cycle, in order.
    pub enum CycleStep {
        /// Sampling and scoring candidates, keeping the pairs worth a label.
        Acquiring,
        /// Pairs with the raters (or the automatic labeller).
        Labelling,
        /// DPO on the labels.
        Training,
        /// Win-rate of the new checkpoint.
        Evaluating,
        /// The round's checkpoint is trained (and evaluated, where it can be).
        Done,
    }
}

impl CycleStep {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Acquiring => "acquiring",
            Self::Labelling => "with raters",
            Self::Training => "training",
            Self::Evaluating => "evaluating",
            Self::Done => "done",
        }
    }
}

/// A rater who labelled pairs of the round in the last [`Cycle::ACTIVE_MINUTES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActiveRater {
    pub name: String,
    /// Their labels on the round's pairs in that window.
    pub labels: i64,
}

/// The newest round's labelling by people.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaterRound {
    /// The round's pairs for raters, and those with all their votes.
    pub pairs: i64,
    pub complete: i64,
    /// Votes each pair wants (the project's overlap).
    pub votes_per_pair: i64,
    /// `pairs_by_votes[v]`: how many pairs have `v` votes.
    pub pairs_by_votes: Vec<i64>,
    pub active: Vec<ActiveRater>,
    /// Labels on the round per minute over the last [`Cycle::ACTIVE_MINUTES`] (or since its
    /// first label, when that is more recent).
    pub labels_per_minute: f64,
    /// Minutes until enough pairs are complete to go on, at that pace (none while nobody is
    /// labelling).
    pub eta_minutes: Option<f64>,
    /// Complete pairs the round goes on with: auto-continue's fraction of the pairs, or all.
    pub needed: i64,
    /// With auto-continue on: it goes on by itself at `needed` complete pairs, or at this time
    /// (ms since the epoch) with whatever is complete.
    pub auto_continue: bool,
    pub deadline_at: Option<i64>,
}

/// A batch's labelling as its raters see it (`RaterHome::batch`): pairs with all their votes,
/// of the round's pairs for raters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchProgress {
    pub round: i64,
    pub pairs: i64,
    pub complete: i64,
}

/// The one action an admin would take next: a job to start, and what the button says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NextAction {
    pub kind: JobKind,
    pub label: String,
}

/// `GET /api/projects/{id}/cycle`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cycle {
    /// The newest round (none before the first).
    pub round: Option<i64>,
    /// Its step; none before the first round is started.
    pub step: Option<CycleStep>,
    /// The job moving the cycle now, queued or running.
    pub job: Option<String>,
    /// Whether an automatic labeller labels the pairs (otherwise people do).
    pub automatic: bool,
    /// With raters, while the round is being labelled.
    pub raters: Option<RaterRound>,
    /// Why the cycle waits, when it does (a failed job, no automatic judge to evaluate, ...).
    pub note: Option<String>,
    pub next: Option<NextAction>,
}

impl Cycle {
    /// The window that counts a rater as active and measures the raters' pace.
    pub const ACTIVE_MINUTES: i64 = 10;
}
