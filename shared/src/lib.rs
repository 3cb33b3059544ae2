//! Types that cross the wire between the server and the frontend.
//!
//! Plain serde data, no behaviour: both sides compile this crate, so a field renamed here is
//! renamed everywhere at once.

use serde::{Deserialize, Serialize};

/// Every error the API returns: a message saying what was wrong and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
}

/// `GET /api/health`: what the server is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Model source (file or directory name, no full path).
    pub model: String,
    pub architecture: String,
    pub parameters: u64,
    pub device: String,
    pub prompts: usize,
}

/// `POST /api/pair`: sample two completions for one prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PairRequest {
    /// The prompt; a random IMDB prompt when absent.
    pub prompt: Option<String>,
    /// Seed for the prompt choice and sampling; random when absent.
    pub seed: Option<u64>,
}

/// Two completions of one prompt, sampled from the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub completions: [Completion; 2],
    pub seed: u64,
    pub temperature: f64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub tokens: usize,
    /// Sum of log pi(y_t | x, y_<t) over the completion under the policy.
    pub logprob: f32,
}
