//! How an error reads to a person: its message, then each cause in turn. Errors keep their
//! causes as `source()` (thiserror's `#[source]`); a failed job, a log line and the command
//! line all print the whole chain with this, once, at the edge.

use std::error::Error;

/// `error: cause: cause of the cause`, skipping a cause whose text the message already ends
/// with (a transparent wrapper).
pub fn describe(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("loading checkpoint c1")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_spelled_out() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
        assert_eq!(describe(&e), "loading checkpoint c1: no such file");
    }
}
