//! One progress bar and one time-left estimate for a whole job, across its stages.
//!
//! A job is a plan of stages (a round: generate, label, train, evaluate), each going through
//! phases with their own work counts ("sampling pairs" 12 of 40, "training" 3 of 16). Rates
//! within a phase say how long the phase has left, but nothing about the stages after it; so
//! the tracker also remembers how long each stage took the last time it ran in the project
//! (read from the finished jobs' stored progress, where `stage_seconds` is kept) and adds those.
//! Until every later stage has been timed once, and while the current stage has outrun its
//! last duration with no work counts to go by, the estimate says it is partial
//! (`eta_complete: false`) rather than promising "0 s left" three minutes before the end; the
//! bar reaches its end only when the job does.
//!
//! The arithmetic is in [`Estimate`], a pure function of the clock readings, so it is tested
//! without waiting; [`Tracker`] feeds it `Instant`s and publishes to the job's watch channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

use apl_shared::{Job, JobKind, JobProgress, JobState};
use tokio::sync::watch;

/// How long each stage took the last time it ran in a project (newest job first).
pub fn stage_history(jobs: &[Job]) -> HashMap<JobKind, f64> {
    let mut out = HashMap::new();
    // `jobs` comes newest first; the first timing seen of a stage is its latest.
    for j in jobs.iter().filter(|j| j.state == JobState::Done) {
        for (kind, secs) in j.progress.stages.iter().zip(&j.progress.stage_seconds) {
            if let Some(secs) = secs {
                out.entry(*kind).or_insert(*secs);
            }
        }
    }
    out
}

/// The bar's end while the job still runs.
const MAX_RUNNING_FRACTION: f64 = 0.99;

/// The clock readings the estimate is made of, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Since the job started.
    pub job_elapsed: f64,
    /// Since the current stage started.
    pub stage_elapsed: f64,
    /// Since the current phase started, and its work done / to do.
    pub phase_elapsed: f64,
    pub step: u64,
    pub total: u64,
}

impl Estimate {
    /// (seconds left for the whole job, whether that covers every stage left, fraction done).
    /// `current` is the current stage's last duration in this project, `later` the later
    /// stages' (None where a stage has never run here), `stage`/`stages` its 1-based position.
    pub fn whole(
        &self,
        current: Option<f64>,
        later: &[Option<f64>],
        stage: usize,
        stages: usize,
    ) -> (Option<f64>, bool, f64) {
        let phase_left = (self.step > 0 && self.total >= self.step)
            .then(|| self.phase_elapsed / self.step as f64 * (self.total - self.step) as f64);
        // The current stage: what its own pace says of the phase it is in, and no less than
        // what is left of its last duration here (later phases of the stage are in that). A
        // stage past its last duration with no pace to go by has an unknown rest.
        let stage_left = match (phase_left, current) {
            (Some(p), Some(h)) => Some(p.max(h - self.stage_elapsed)),
            (Some(p), None) => Some(p),
            (None, Some(h)) if h > self.stage_elapsed => Some(h - self.stage_elapsed),
            (None, _) => None,
        };
        let complete = stage_left.is_some() && later.iter().all(Option::is_some);
        let eta = stage_left.map(|s| s + later.iter().flatten().sum::<f64>());
        let phase_fraction = if self.total > 0 { (self.step as f64 / self.total as f64).min(1.0) } else { 0.0 };
        let fraction = match eta {
            Some(eta) if complete && self.job_elapsed + eta > 0.0 => self.job_elapsed / (self.job_elapsed + eta),
            _ => (stage.saturating_sub(1) as f64 + phase_fraction) / stages.max(1) as f64,
        };
        // Only `Tracker::finish` says the job is over.
        (eta, complete, fraction.clamp(0.0, MAX_RUNNING_FRACTION))
    }
}

/// Publishes a job's progress: its stage, phase, work counts and one estimate for the job.
pub struct Tracker<'a> {
    tx: &'a watch::Sender<JobProgress>,
    history: HashMap<JobKind, f64>,
    job_start: Instant,
    stage_start: Cell<Instant>,
    phase_start: Cell<Instant>,
    /// Finished stages' seconds, in plan order (none: not timed).
    done: RefCell<Vec<Option<f64>>>,
    /// The current stage did not do its work: its time is not recorded.
    untimed: Cell<bool>,
}

impl<'a> Tracker<'a> {
    pub fn new(tx: &'a watch::Sender<JobProgress>, history: HashMap<JobKind, f64>) -> Self {
        let now = Instant::now();
        Self {
            tx,
            history,
            job_start: now,
            stage_start: Cell::new(now),
            phase_start: Cell::new(now),
            done: RefCell::new(Vec::new()),
            untimed: Cell::new(false),
        }
    }

    /// Sets the job's stages (called once its plan is known, before the first stage).
    pub fn plan(&self, stages: Vec<JobKind>) {
        self.tx.send_modify(|p| {
            p.stages = stages;
            p.stage = 0;
        });
    }

    /// Enters `kind`, the next stage of the plan at or after the current one (a stage not in
    /// the plan is added to it); the stage before it is finished and timed.
    pub fn stage(&self, kind: JobKind) {
        let now = Instant::now();
        self.close_stage(now);
        self.stage_start.set(now);
        self.phase_start.set(now);
        self.tx.send_modify(|p| {
            let from = p.stage as usize;
            let at = match p.stages.iter().skip(from).position(|k| *k == kind) {
                Some(i) => from + i,
                None => {
                    p.stages.insert(from, kind);
                    from
                }
            };
            // Stages of the plan that were passed over are not timed.
            let mut done = self.done.borrow_mut();
            while done.len() < at {
                done.push(None);
            }
            p.stage_seconds = done.clone();
            p.stage = at as u32 + 1;
            p.step = 0;
            p.total = 0;
        });
        self.publish();
    }

    fn close_stage(&self, now: Instant) {
        let stage = self.tx.borrow().stage as usize;
        if stage > 0 {
            let mut done = self.done.borrow_mut();
            while done.len() < stage - 1 {
                done.push(None);
            }
            if done.len() == stage - 1 {
                let secs = now.duration_since(self.stage_start.get()).as_secs_f64();
                done.push((!self.untimed.replace(false)).then_some(secs));
            }
        }
    }

    /// The current stage did not do its work (a checkpoint reused, an evaluation that failed
    /// and was gone past): its time is not taken as its usual duration.
    pub fn untimed(&self) {
        self.untimed.set(true);
    }

    /// A new phase of the current stage, with a line about it.
    pub fn phase(&self, phase: &str, message: String) {
        self.phase_start.set(Instant::now());
        self.tx.send_modify(|p| {
            p.phase = phase.into();
            p.message = message;
            p.step = 0;
            p.total = 0;
        });
        self.publish();
    }

    /// `step` of `total` done in `phase` (a new phase when the name changes).
    pub fn step(&self, phase: &str, step: usize, total: usize, loss: Option<f64>) {
        if self.tx.borrow().phase != phase {
            self.phase_start.set(Instant::now());
        }
        self.tx.send_modify(|p| {
            if p.phase != phase {
                p.phase = phase.to_string();
            }
            p.step = step as u64;
            p.total = total as u64;
            p.loss = loss.or(p.loss);
        });
        self.publish();
    }

    /// The job's last progress, its final stage timed (kept with the finished job, where the
    /// next job's estimate reads it).
    pub fn finish(&self) -> JobProgress {
        self.close_stage(Instant::now());
        let done = self.done.borrow().clone();
        self.tx.send_modify(|p| {
            p.stage_seconds = done;
            p.eta_seconds = Some(0.0);
            p.eta_complete = true;
            p.fraction = 1.0;
        });
        self.tx.borrow().clone()
    }

    /// Recomputes the estimate from the clock and publishes it.
    fn publish(&self) {
        let now = Instant::now();
        let secs = |t: Instant| now.duration_since(t).as_secs_f64();
        self.tx.send_modify(|p| {
            let e = Estimate {
                job_elapsed: secs(self.job_start),
                stage_elapsed: secs(self.stage_start.get()),
                phase_elapsed: secs(self.phase_start.get()),
                step: p.step,
                total: p.total,
            };
            let stage = (p.stage as usize).max(1);
            let current = p.stages.get(stage - 1).and_then(|k| self.history.get(k).copied());
            let later: Vec<Option<f64>> = p.stages.iter().skip(stage).map(|k| self.history.get(k).copied()).collect();
            let (eta, complete, fraction) = e.whole(current, &later, stage, p.stages.len());
            p.eta_seconds = eta;
            p.eta_complete = complete;
            // The bar never goes back within a job.
            p.fraction = fraction.max(p.fraction);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(job: f64, stage: f64, phase: f64, step: u64, total: u64) -> Estimate {
        Estimate { job_elapsed: job, stage_elapsed: stage, phase_elapsed: phase, step, total }
    }

    #[test]
    fn the_estimate_adds_the_phases_pace_and_the_later_stages_last_durations() {
        // Training, 4 of 16 steps in 10 s: 30 s left of the phase by its pace. The stage took
        // 20 s last time (less than its pace says now: the pace wins). Evaluate took 50 s.
        // 30 + 50 = 80 s left; 100 s elapsed, so 100 / 180 done.
        let (eta, complete, fraction) = at(100.0, 10.0, 10.0, 4, 16).whole(Some(20.0), &[Some(50.0)], 3, 4);
        assert_eq!(eta, Some(80.0));
        assert!(complete);
        assert!((fraction - 100.0 / 180.0).abs() < 1e-12);
    }

    #[test]
    fn a_stage_timed_before_is_not_over_while_its_first_phase_is() {
        // The reference log-probs phase (first of train) is done, 5 s into a stage that took
        // 60 s last time: 55 s left, not 0.
        let (eta, complete, _) = at(5.0, 5.0, 5.0, 10, 10).whole(Some(60.0), &[], 1, 1);
        assert_eq!(eta, Some(55.0));
        assert!(complete);
    }

    #[test]
    fn an_untimed_later_stage_makes_the_estimate_partial_and_the_bar_counts_stages() {
        // Stage 2 of 4, half its phase done in 6 s: 6 s left of it; stage 3 timed (40 s),
        // stage 4 never ran here. 46 s is a lower bound, and the bar shows (1 + 0.5) / 4.
        let (eta, complete, fraction) = at(30.0, 6.0, 6.0, 5, 10).whole(None, &[Some(40.0), None], 2, 4);
        assert_eq!(eta, Some(46.0));
        assert!(!complete);
        assert_eq!(fraction, 0.375);
        // Past its last duration (10 s) with no work counts yet: not "0 s left", and not the
        // whole bar.
        let (eta, complete, fraction) = at(100.0, 20.0, 0.1, 0, 0).whole(Some(10.0), &[], 1, 1);
        assert_eq!((eta, complete), (None, false));
        assert!(fraction < 1.0);
        // Nothing known about the current stage yet: no estimate at all.
        let (eta, complete, fraction) = at(1.0, 1.0, 1.0, 0, 0).whole(None, &[Some(3.0)], 1, 2);
        assert_eq!((eta, complete, fraction), (None, false, 0.0));
    }

    #[test]
    fn the_history_takes_each_stages_newest_timing_from_finished_jobs() {
        let job = |state, stages: Vec<JobKind>, secs: Vec<Option<f64>>| Job {
            id: String::new(),
            project_id: String::new(),
            kind: JobKind::Round,
            params: Default::default(),
            state,
            progress: JobProgress { stages, stage_seconds: secs, ..Default::default() },
            result: None,
            error: None,
            attempts: 1,
            created_at: 0,
            started_at: None,
            finished_at: None,
        };
        use JobKind::*;
        let jobs = vec![
            job(JobState::Failed, vec![Train], vec![Some(1.0)]),
            job(JobState::Done, vec![Train, Evaluate, Generate], vec![Some(30.0), None, Some(12.0)]),
            job(
                JobState::Done,
                vec![Generate, Label, Train, Evaluate],
                vec![Some(10.0), Some(5.0), Some(20.0), Some(40.0)],
            ),
        ];
        let h = stage_history(&jobs);
        assert_eq!(h[&Train], 30.0, "the newest finished job's, not the failed one's");
        assert_eq!(h[&Generate], 12.0);
        assert_eq!(h[&Evaluate], 40.0, "a stage not timed in the newest job keeps the older timing");
        assert_eq!(h[&Label], 5.0);
    }

    #[test]
    fn stages_are_timed_in_plan_order_and_the_bar_never_goes_back() {
        let (tx, _rx) = watch::channel(JobProgress::default());
        let t = Tracker::new(&tx, HashMap::new());
        t.plan(vec![JobKind::Train, JobKind::Evaluate, JobKind::Generate]);
        t.stage(JobKind::Train);
        t.step("training", 8, 8, Some(0.5));
        let after_train = tx.borrow().fraction;
        assert_eq!(after_train, 1.0 / 3.0);
        let (eta, complete, fraction) = at(5.0, 5.0, 5.0, 8, 8).whole(None, &[], 1, 1);
        assert_eq!((eta, complete, fraction), (Some(0.0), true, MAX_RUNNING_FRACTION), "the last step is not the end");
        // No evaluation (no judge): generate follows; evaluate is not timed.
        t.stage(JobKind::Generate);
        assert_eq!(tx.borrow().stage, 3);
        assert!(tx.borrow().fraction >= after_train);
        // A generate that did not do its work (say) is not timed either.
        t.untimed();
        let p = t.finish();
        assert_eq!(p.stage_seconds.len(), 3);
        assert!(p.stage_seconds[0].is_some());
        assert_eq!(p.stage_seconds[1..], [None, None]);
        assert_eq!(p.fraction, 1.0);
        assert_eq!(p.loss, Some(0.5));
    }
}
