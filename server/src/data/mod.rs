//! Prompt sources. Only IMDB so far; TL;DR-format and generic JSONL files come with the
//! learning loop.

pub mod imdb;
pub mod prompts;
