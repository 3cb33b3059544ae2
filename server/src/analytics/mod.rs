//! Label-quality and ranking statistics the dashboard shows: agreement between raters and judges
//! (`agreement`), bootstrap intervals for any of them (`bootstrap`), raw and length-controlled
//! win-rates (`winrate`), a Bradley-Terry ranking of checkpoints (`bradley_terry`) and human
//! win-rate checks beside the judge's (`checks`); `project` puts them together into a project's
//! report.
//!
//! Pure functions over plain slices, so each is checked against a value computed by hand or by a
//! reference library on fixed data (the computation is in the test's comment).

pub mod agreement;
pub mod bootstrap;
pub mod bradley_terry;
pub mod checks;
pub mod project;
pub mod winrate;

pub use apl_shared::paired;
pub use bootstrap::Interval;
