//! Failed requests, counted by gRPC code and message.
//!
//! etcd's errors are told apart by their exact message (`etcdserver: ...`), so
//! the message is kept next to the code; transport failures (connection reset,
//! deadline exceeded) show up here too.

use std::collections::HashMap;

use serde::Serialize;
use tonic::Code;

/// Distinct messages kept per tally; any beyond are counted under one entry, so a
/// server that puts ids into its messages cannot make the tally grow without bound.
pub const DISTINCT_MESSAGES_MAX: usize = 256;
/// Messages shown per code in the report.
pub const MESSAGES_SHOWN_PER_CODE: usize = 3;
const OTHER_MESSAGES: &str = "(other messages)";

#[derive(Debug, Default, Clone)]
pub struct ErrorTally {
    counts: HashMap<(Code, String), u64>,
}

impl ErrorTally {
    pub fn record(&mut self, code: Code, message: &str) {
        self.add(code, message, 1);
    }

    fn add(&mut self, code: Code, message: &str, count: u64) {
        let known = self.counts.contains_key(&(code, message.to_string()));
        let message = if known || self.counts.len() < DISTINCT_MESSAGES_MAX {
            message
        } else {
            OTHER_MESSAGES
        };
        *self.counts.entry((code, message.to_string())).or_insert(0) += count;
    }

    pub fn merge(&mut self, other: &ErrorTally) {
        for ((code, message), count) in &other.counts {
            self.add(*code, message, *count);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Counts by code, most frequent first, each with its most frequent messages.
    pub fn by_code(&self) -> Vec<ErrorsByCode> {
        let mut codes: HashMap<Code, Vec<MessageCount>> = HashMap::new();
        for ((code, message), count) in &self.counts {
            codes.entry(*code).or_default().push(MessageCount {
                message: message.clone(),
                count: *count,
            });
        }
        let mut by_code: Vec<ErrorsByCode> = codes
            .into_iter()
            .map(|(code, mut messages)| {
                messages.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.message.cmp(&b.message)));
                let count = messages.iter().map(|m| m.count).sum();
                let distinct_messages = messages.len();
                messages.truncate(MESSAGES_SHOWN_PER_CODE);
                ErrorsByCode {
                    code: code_name(code),
                    count,
                    distinct_messages,
                    messages,
                }
            })
            .collect();
        by_code.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
        by_code
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorsByCode {
    /// gRPC code name as etcd's clients print it: `Unavailable`, `FailedPrecondition`...
    pub code: String,
    pub count: u64,
    pub distinct_messages: usize,
    /// The most frequent messages, most frequent first.
    pub messages: Vec<MessageCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageCount {
    pub message: String,
    pub count: u64,
}

/// gRPC's name for a code (`Code::Unavailable` -> `Unavailable`).
pub fn code_name(code: Code) -> String {
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_grouped_by_code_most_frequent_first() {
        let mut tally = ErrorTally::default();
        tally.record(Code::Unavailable, "etcdserver: leader changed");
        tally.record(Code::DeadlineExceeded, "Timeout expired");
        tally.record(Code::Unavailable, "etcdserver: leader changed");
        tally.record(Code::Unavailable, "connection reset");
        let by_code = tally.by_code();
        assert_eq!(tally.total(), 4);
        assert_eq!(by_code[0].code, "Unavailable");
        assert_eq!(by_code[0].count, 3);
        assert_eq!(by_code[0].distinct_messages, 2);
        assert_eq!(
            by_code[0].messages[0],
            MessageCount {
                message: "etcdserver: leader changed".into(),
                count: 2
            }
        );
        assert_eq!(by_code[1].code, "DeadlineExceeded");
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = ErrorTally::default();
        a.record(Code::Internal, "x");
        let mut b = ErrorTally::default();
        b.record(Code::Internal, "x");
        b.record(Code::Internal, "y");
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.by_code()[0].messages[0].count, 2);
    }

    #[test]
    fn distinct_messages_are_bounded() {
        let mut tally = ErrorTally::default();
        for i in 0..DISTINCT_MESSAGES_MAX + 50 {
            tally.record(Code::Unknown, &format!("request {i} failed"));
        }
        assert_eq!(tally.total(), (DISTINCT_MESSAGES_MAX + 50) as u64);
        assert_eq!(tally.counts.len(), DISTINCT_MESSAGES_MAX + 1);
        assert_eq!(tally.by_code()[0].messages.len(), MESSAGES_SHOWN_PER_CODE);
    }

    #[test]
    fn only_the_top_messages_are_shown() {
        let mut tally = ErrorTally::default();
        for (message, times) in [("a", 1), ("b", 5), ("c", 3), ("d", 4)] {
            for _ in 0..times {
                tally.record(Code::Aborted, message);
            }
        }
        let by_code = tally.by_code();
        let shown: Vec<&str> = by_code[0].messages.iter().map(|m| m.message.as_str()).collect();
        assert_eq!(shown, vec!["b", "d", "c"]);
    }
}
