//! The local IMDB sentiment oracle: multinomial naive Bayes over lower-cased word unigrams and
//! bigrams (scikit-learn's `CountVectorizer(ngram_range=(1, 2), min_df=2)` + `MultinomialNB`,
//! re-implemented), trained on the IMDB review labels. It prefers the completion whose text
//! (prompt + completion) is more likely positive.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Comparison, Judgement, Oracle, OracleError, Preference};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NaiveBayes {
    vocab: HashMap<String, u32>,
    /// log P(feature | class), class 0 negative, 1 positive.
    log_prob: [Vec<f32>; 2],
    log_prior: [f64; 2],
}

/// Words as scikit-learn's default token pattern `(?u)\b\w\w+\b` finds them, lower-cased.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .collect()
}

/// Unigrams and bigrams ("word word") of a text.
fn features(text: &str) -> Vec<String> {
    let w = words(text);
    let mut f = Vec::with_capacity(w.len() * 2);
    for pair in w.windows(2) {
        f.push(format!("{} {}", pair[0], pair[1]));
    }
    f.extend(w);
    f
}

impl NaiveBayes {
    /// Trains on (text, label) with label 1 = positive. Features in fewer than `min_df`
    /// documents are dropped; `alpha` is the Laplace smoothing.
    pub fn train(docs: &[(&str, u8)], min_df: usize, alpha: f64) -> Self {
        let feats: Vec<Vec<String>> = docs.iter().map(|(t, _)| features(t)).collect();
        let mut df: HashMap<&str, u32> = HashMap::new();
        for f in &feats {
            let mut seen: Vec<&str> = f.iter().map(String::as_str).collect();
            seen.sort_unstable();
            seen.dedup();
            for s in seen {
                *df.entry(s).or_default() += 1;
            }
        }
        let mut kept: Vec<&str> = df.iter().filter(|(_, n)| **n as usize >= min_df).map(|(s, _)| *s).collect();
        kept.sort_unstable();
        let vocab: HashMap<String, u32> = kept.iter().enumerate().map(|(i, s)| (s.to_string(), i as u32)).collect();
        let mut counts = [vec![0f64; vocab.len()], vec![0f64; vocab.len()]];
        let mut class_docs = [0usize; 2];
        for (f, (_, label)) in feats.iter().zip(docs) {
            let c = usize::from(*label == 1);
            class_docs[c] += 1;
            for s in f {
                if let Some(&i) = vocab.get(s.as_str()) {
                    counts[c][i as usize] += 1.0;
                }
            }
        }
        let n = docs.len() as f64;
        let log_prob = counts.map(|cnt| {
            let total: f64 = cnt.iter().sum::<f64>() + alpha * cnt.len() as f64;
            cnt.iter().map(|c| ((c + alpha) / total).ln() as f32).collect()
        });
        let log_prior = [(class_docs[0] as f64 / n).ln(), (class_docs[1] as f64 / n).ln()];
        Self { vocab, log_prob, log_prior }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// log P(positive | text) - log P(negative | text). Comparisons use this: the probability
    /// rounds to exactly 1.0 in f64 beyond log-odds of about 36.7, so two strongly positive
    /// texts would compare equal.
    pub fn log_odds(&self, text: &str) -> f64 {
        let mut score = self.log_prior;
        for f in features(text) {
            if let Some(&i) = self.vocab.get(&f) {
                score[0] += f64::from(self.log_prob[0][i as usize]);
                score[1] += f64::from(self.log_prob[1][i as usize]);
            }
        }
        score[1] - score[0]
    }

    /// P(positive | text): the softmax over the two classes.
    pub fn prob_positive(&self, text: &str) -> f64 {
        1.0 / (1.0 + (-self.log_odds(text)).exp())
    }

    /// Fraction of (text, label) classified correctly at threshold 0.5.
    pub fn accuracy(&self, docs: &[(&str, u8)]) -> f64 {
        let right = docs.iter().filter(|(t, l)| (self.prob_positive(t) > 0.5) == (*l == 1)).count();
        right as f64 / docs.len().max(1) as f64
    }
}

/// Prefers the more positive text (prompt + completion) by its log-odds; exact ties are no
/// decision.
pub struct SentimentOracle {
    pub model: NaiveBayes,
}

impl Oracle for SentimentOracle {
    fn name(&self) -> String {
        "imdb-sentiment-nb".into()
    }

    fn score(&self, prompt: &str, completion: &str) -> Option<f64> {
        Some(self.model.log_odds(&format!("{prompt}{completion}")))
    }

    fn judge(&self, c: &Comparison) -> Result<Judgement, OracleError> {
        let (la, lb) = (
            self.model.log_odds(&format!("{}{}", c.prompt, c.a)),
            self.model.log_odds(&format!("{}{}", c.prompt, c.b)),
        );
        let preference = if la > lb {
            Preference::A
        } else if lb > la {
            Preference::B
        } else {
            Preference::NoDecision
        };
        Ok(Judgement { preference, rationale: Some(format!("log-odds of positive A {la:.3}, B {lb:.3}")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_sklearn_tokenisation() {
        assert_eq!(words("It's a GREAT film, 10/10!"), vec!["it", "great", "film", "10", "10"]);
        assert!(features("very good").contains(&"very good".to_string()));
    }

    #[test]
    fn learns_a_toy_sentiment() {
        let docs = [
            ("a great wonderful film", 1),
            ("great acting and a wonderful story", 1),
            ("wonderful, great fun", 1),
            ("a terrible boring film", 0),
            ("boring story and terrible acting", 0),
            ("terrible, boring mess", 0),
        ];
        let nb = NaiveBayes::train(&docs, 2, 1.0);
        assert!(nb.vocab.contains_key("great") && !nb.vocab.contains_key("mess"), "min_df = 2");
        assert_eq!(nb.accuracy(&docs), 1.0);
        assert!(nb.prob_positive("great") > 0.5 && nb.prob_positive("boring") < 0.5);
        let o = SentimentOracle { model: nb };
        let j = o.judge(&Comparison { prompt: "The film was ", a: "boring", b: "wonderful" }).unwrap();
        assert_eq!(j.preference, Preference::B);
        let j = o.judge(&Comparison { prompt: "x", a: "zzz", b: "qqq" }).unwrap();
        assert_eq!(j.preference, Preference::NoDecision);
    }

    #[test]
    fn strongly_positive_texts_still_compare() {
        let docs = [("great great fun", 1), ("great fun", 1), ("dull dull mess", 0), ("dull mess", 0)];
        let o = SentimentOracle { model: NaiveBayes::train(&docs, 2, 1.0) };
        // Vocabulary at min_df 2: dull, "dull mess", fun, great, "great fun", mess. Positive
        // counts great 3, fun 2, "great fun" 2: total 7 + 6 (smoothing) = 13, so P(great | pos)
        // = 4/13; negative P(great | neg) = 1/13. Each "great" adds ln 4 = 1.386294 log-odds
        // ("great great" was dropped by min_df); equal priors add nothing.
        let per = o.model.log_odds("great");
        assert!((per - 4f64.ln()).abs() < 1e-6, "{per}");
        let a = "great ".repeat(60);
        let b = "great ".repeat(50);
        // Both are certain in f64: P(positive) is exactly 1.0 for each.
        assert_eq!((o.model.prob_positive(&a), o.model.prob_positive(&b)), (1.0, 1.0));
        let j = o.judge(&Comparison { prompt: "", a: &a, b: &b }).unwrap();
        assert_eq!(j.preference, Preference::A, "{:?}", j.rationale);
        // 60 ln 4 = 83.178 against 50 ln 4 = 69.315.
        assert!((o.model.log_odds(&a) - 83.177662).abs() < 1e-4);
        assert!((o.model.log_odds(&b) - 69.314718).abs() < 1e-4);
    }
}
