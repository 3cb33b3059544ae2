//! Where a project's cycle stands, derived from what is stored (see [`apl_shared::Cycle`]).
//!
//! A handful of small reads, each on an index (the newest round, checkpoint, evaluation and
//! jobs; the round's pairs grouped by votes; the last minutes' labels), so the run tab can poll
//! it. The step is read from the job in flight when there is one (its current stage), otherwise
//! from the newest round: trained on means done, not yet means labelling.

use apl_shared::{
    ActiveRater, BatchProgress, Choice, Cycle, CycleStep, Job, JobKind, JobState, NextAction, PairKind, Project,
    RaterRound,
};

use super::jobs::JOB_COLUMNS;
use super::{Result, Store, now_ms};

/// The step a job's stage is.
fn step_of(stage: JobKind) -> CycleStep {
    match stage {
        JobKind::Generate | JobKind::Round => CycleStep::Acquiring,
        JobKind::Label => CycleStep::Labelling,
        JobKind::Train | JobKind::Continue => CycleStep::Training,
        JobKind::Evaluate => CycleStep::Evaluating,
    }
}

impl Store {
    pub async fn cycle(&self, project: &Project) -> Result<Cycle> {
        let pid = &project.id;
        let settings = &project.config.loop_settings;
        let automatic = settings.labeller.is_automatic();
        let live: Option<Job> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE project_id = $1 AND state IN ($2, $3) ORDER BY created_at, id LIMIT 1"
        )))
        .bind(pid)
        .bind(JobState::Running)
        .bind(JobState::Queued)
        .fetch_optional(&self.pool)
        .await?;
        let round = self.newest_round(pid).await?;
        let mut cycle = Cycle { round: round.map(|r| r.0), automatic, ..Default::default() };

        if let Some(job) = live {
            let p = &job.progress;
            // Queued, or before its first stage: the first stage its kind runs.
            let stage = p.stages.get((p.stage as usize).max(1) - 1).copied().unwrap_or(job.kind);
            let step = step_of(stage);
            // Acquiring the next round, unless the round it acquired is already stored (the
            // job's progress lags its commits by a heartbeat).
            let stored_by_job =
                round.zip(job.started_at).is_some_and(|((_, acquired_at), started)| acquired_at >= started);
            if step == CycleStep::Acquiring && !stored_by_job {
                cycle.round = Some(cycle.round.unwrap_or(0) + 1);
            }
            cycle.step = Some(step);
            cycle.job = Some(job.id);
            return Ok(cycle);
        }
        let Some((number, acquired_at)) = round else {
            cycle.next = Some(NextAction { kind: JobKind::Round, label: "Start round 1".into() });
            return Ok(cycle);
        };
        let trained = self.trained_on(pid, number).await?;
        let last: Option<(JobKind, JobState, Option<String>)> = sqlx::query_as(
            "SELECT kind, state, error FROM jobs WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(pid)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((kind, JobState::Failed, error)) = &last {
            cycle.note =
                Some(format!("the last job ({kind}) failed: {}", error.as_deref().unwrap_or("no reason given")));
        }
        let next = |kind, label: String| Some(NextAction { kind, label });

        if let Some(checkpoint) = trained {
            cycle.step = Some(CycleStep::Done);
            let evaluated: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM evaluations WHERE checkpoint_id = $1")
                .bind(&checkpoint)
                .fetch_one(&self.pool)
                .await?;
            cycle.next = match evaluated == 0 && self.can_evaluate(project).await? {
                true => next(JobKind::Evaluate, format!("Evaluate round {number}'s checkpoint")),
                false => next(JobKind::Round, format!("Start round {}", number + 1)),
            };
            return Ok(cycle);
        }
        cycle.step = Some(CycleStep::Labelling);
        if automatic {
            // A round acquired on its own (a `generate` job) waits for its labels, then training.
            let unjudged: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM pairs p WHERE p.project_id = $1 AND p.round = $2 AND p.check_id IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM judge_labels j WHERE j.pair_id = p.id) LIMIT 1",
            )
            .bind(pid)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?;
            cycle.next = match unjudged {
                None => next(JobKind::Train, format!("Train on round {number}'s labels")),
                Some(_) => next(JobKind::Label, format!("Label round {number} with the {}", settings.labeller)),
            };
            return Ok(cycle);
        }
        let raters = self.rater_round(project, number, acquired_at).await?;
        if raters.pairs == 0 {
            // Acquired while an automatic labeller was set: nothing for raters to finish.
            cycle.note =
                Some(format!("round {number} has no pairs for raters (it was acquired for an automatic labeller)"));
            cycle.next = next(JobKind::Round, format!("Acquire round {} for the raters", number + 1));
            cycle.raters = Some(raters);
            return Ok(cycle);
        }
        if raters.auto_continue && self.continue_stopped(pid, number).await? {
            cycle.note = Some(format!(
                "auto-continue stopped for round {number}: its continue job failed or was cancelled; start it again when ready"
            ));
        }
        if raters.complete > 0 {
            let label = format!("Train on the {} complete pairs now and acquire round {}", raters.complete, number + 1);
            cycle.next = next(JobKind::Continue, label);
        }
        cycle.raters = Some(raters);
        Ok(cycle)
    }

    /// The newest round, when it has pairs for raters, and how many of them have all their
    /// votes. (Its number from `rounds`: a MAX over pairs would walk every pair of the project,
    /// the round index being partial.)
    pub async fn batch(&self, project_id: &str) -> Result<Option<BatchProgress>> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT p.round, COUNT(*), COALESCE(SUM(CASE WHEN p.votes >= p.target_votes THEN 1 ELSE 0 END), 0) \
             FROM pairs p WHERE p.project_id = $1 AND p.kind = $2 AND p.target_votes > 0 AND p.check_id IS NULL \
             AND p.round = (SELECT MAX(r.number) FROM rounds r WHERE r.project_id = $1) \
             GROUP BY p.round",
        )
        .bind(project_id)
        .bind(PairKind::Train)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(round, pairs, complete)| BatchProgress { round, pairs, complete }))
    }

    /// The labelling by people of round `number` (acquired at `acquired_at`).
    async fn rater_round(&self, project: &Project, number: i64, acquired_at: i64) -> Result<RaterRound> {
        let pid = &project.id;
        let auto = &project.config.rating.auto_continue;
        let by_votes = self.round_votes(pid, number).await?;
        let votes_per_pair = by_votes.iter().map(|r| r.1).max().unwrap_or(project.config.rating.overlap as i64);
        let mut r = RaterRound { votes_per_pair, ..Default::default() };
        r.pairs_by_votes = vec![0; votes_per_pair.max(0) as usize + 1];
        let mut votes_left = 0;
        for (votes, target, n) in by_votes {
            r.pairs += n;
            if votes >= target {
                r.complete += n;
            }
            votes_left += (target - votes).max(0) * n;
            r.pairs_by_votes[votes.clamp(0, votes_per_pair) as usize] += n;
        }
        let now = now_ms();
        let window_start = now - Cycle::ACTIVE_MINUTES * 60_000;
        let active: Vec<(String, i64, i64)> = sqlx::query_as(
            // From the project's raters through their recent labels (index labels_rater).
            "SELECT r.name, COUNT(*), MIN(l.created_at) FROM raters r \
             JOIN labels l ON l.rater_id = r.id AND l.created_at >= $3 JOIN pairs p ON p.id = l.pair_id \
             WHERE r.project_id = $1 AND p.round = $2 AND p.check_id IS NULL AND l.choice <> $4 \
             GROUP BY r.name ORDER BY COUNT(*) DESC, r.name",
        )
        .bind(pid)
        .bind(number)
        .bind(window_start)
        .bind(Choice::Skip)
        .fetch_all(&self.pool)
        .await?;
        let labels: i64 = active.iter().map(|a| a.1).sum();
        // The pace over the window, or since the first label in it when the round is younger.
        let since = active.iter().map(|a| a.2).min().unwrap_or(now).max(window_start).max(acquired_at);
        let minutes = ((now - since) as f64 / 60_000.0).max(0.5);
        r.labels_per_minute = labels as f64 / minutes;
        r.active = active.into_iter().map(|(name, labels, _)| ActiveRater { name, labels }).collect();
        r.auto_continue = auto.enabled;
        // The complete pairs it goes on with, as auto-continue counts them (all, when it is off).
        r.needed = match auto.enabled {
            true => auto.needed(r.pairs).min(r.pairs),
            false => r.pairs,
        };
        r.deadline_at = auto.deadline_minutes.filter(|_| auto.enabled).map(|m| acquired_at + m as i64 * 60_000);
        // Votes still wanted by the pairs nearest completion, enough of them to reach `needed`.
        let short = (r.needed - r.complete).max(0);
        let votes_wanted = match r.pairs - r.complete {
            0 => 0.0,
            open => votes_left as f64 * short as f64 / open as f64,
        };
        r.eta_minutes = (r.labels_per_minute > 0.0).then(|| votes_wanted / r.labels_per_minute);
        Ok(r)
    }
}
