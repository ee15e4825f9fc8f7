//! Runs Prometheus PromQL test scripts (`.test` files) against the engine.
//!
//! The language and its checks follow Prometheus's `promqltest` (3.x):
//!
//! - `load <interval>` adds series, sample `i` at `i * interval` from time 0; values expand as
//!   described in [`SeqValue`]. `load_with_nhcb` also derives native histograms with custom
//!   buckets from classic histograms (never stored here, see the skip rules). `clear` drops
//!   everything.
//! - `eval instant at <t> <query>` and `eval range from <t0> to <t1> step <s> <query>` are
//!   followed by expected series (`labels values...`), a scalar line, `expect string "..."`,
//!   or nothing (an empty result), and `expect` lines: `fail [msg:|regex:]`, `ordered`,
//!   `warn [msg:|regex:]`, `no_warn`, `info [msg:|regex:]`, `no_info`, `range vector from ..
//!   to .. step ..`. The legacy `eval_fail`, `eval_warn`, `eval_info`, `eval_ordered` and
//!   `expected_fail_message`/`expected_fail_regexp` lines mean what they meant.
//! - Values compare with a relative tolerance of [`EPSILON`] ([`almost_equal`]); NaN equals
//!   NaN. Vectors compare unordered unless ordered is expected; matrices by series and points.
//! - Annotations are only checked when an `expect warn|no_warn|info|no_info` line (or
//!   `eval_warn`/`eval_info`) asks: then every expected message must be present and, when
//!   `warn`/`info` lines are given, every annotation of that kind must match one of them.
//! - Every instant case also runs as a range query from t-1m to t+1m step 1m, whose point at
//!   t must match the same expectation (not for `expect string`, `expect range vector`, or
//!   queries calling `range()`, `step()`, `start()`, `end()`; an ordered case only checks that
//!   it succeeds), and again with every top-level selector pinned by `@ t` at the times -10t,
//!   0, t/5, t, 10t (-1s, 0, 1s when t is 0), unless it calls a function listed in
//!   [`AT_MODIFIER_UNSAFE_FUNCTIONS`].
//!
//! Cases that need native histograms are skipped with a stated reason; see [`SKIPPED_FUNCTIONS`]
//! and the rules in the `skip` module: expected `{{...}}` output, or a selector that may read a
//! series loaded with histogram values or derived by `load_with_nhcb`.

mod compare;
mod parse;
mod rewrite;
mod run;
mod series;
mod skip;
#[cfg(test)]
mod tests;

pub use compare::{almost_equal, EPSILON};
pub use parse::{parse_duration, parse_go_number};
pub use rewrite::AT_MODIFIER_UNSAFE_FUNCTIONS;
pub use skip::SKIPPED_FUNCTIONS;

use regex::Regex;
use std::fmt;
use std::io;
use std::path::Path;
use strata_model::Labels;
use thiserror::Error;

/// A malformed script: what was wrong and on which (1-based) line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// A parsed script: its commands in order.
#[derive(Debug, Clone)]
pub struct Script {
    /// The commands, in file order.
    pub commands: Vec<Command>,
}

/// One script command.
#[derive(Debug, Clone)]
pub enum Command {
    /// `load` / `load_with_nhcb`.
    Load(Load),
    /// `clear`: drop all loaded data.
    Clear {
        /// 1-based line of the command.
        line: usize,
    },
    /// `eval ...` with its expectations.
    Eval(Box<EvalCase>),
}

/// A `load` block.
#[derive(Debug, Clone)]
pub struct Load {
    /// 1-based line of the `load` command.
    pub line: usize,
    /// Time between consecutive values, ms.
    pub interval_ms: i64,
    /// `load_with_nhcb`: classic histograms also become native histograms.
    pub with_nhcb: bool,
    /// The series, in file order (a repeated series keeps only its last definition).
    pub series: Vec<SeriesDef>,
}

/// A series description line of a `load` block.
#[derive(Debug, Clone)]
pub struct SeriesDef {
    /// 1-based line.
    pub line: usize,
    /// The series labels, `__name__` included.
    pub labels: Labels,
    /// The expanded values; value `i` sits at `i * interval`.
    pub values: Vec<SeqValue>,
}

/// One expanded value of a series description.
///
/// Expansion: `a` is one value; `axN` is `a` N+1 times; `a+bxN` / `a-bxN` are N+1 values
/// starting at `a` and stepping by `b`; `_` is one missing value and `_xN` N missing values;
/// `stale` is the staleness marker ([`strata_model::STALE_NAN`]); numbers may be `Inf`, `NaN`
/// (any case) or signed; `0x59` is 0 repeated 60 times (no hexadecimal here); `{{...}}` is a
/// native histogram, also with `xN` or `{{...}}+{{...}}xN`.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqValue {
    /// No sample at this position.
    Omitted,
    /// A float sample (possibly NaN or the staleness marker).
    Float(f64),
    /// A native histogram sample, as written.
    Histogram(String),
}

/// When an `eval` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalKind {
    /// `eval instant at <at>`.
    Instant {
        /// Evaluation time, ms since the epoch.
        at_ms: i64,
    },
    /// `eval range from <start> to <end> step <step>`.
    Range {
        /// First step, ms.
        start_ms: i64,
        /// Last step (inclusive), ms.
        end_ms: i64,
        /// Step, ms.
        step_ms: i64,
    },
}

/// `expect range vector from <start> to <end> step <step>`: an instant query returning a
/// matrix, evaluated at `end`, whose expected values sit at `start + i * step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeWindow {
    /// Time of the first expected value, ms.
    pub start_ms: i64,
    /// Evaluation time and last possible value time, ms.
    pub end_ms: i64,
    /// Spacing of the expected values, ms.
    pub step_ms: i64,
}

/// How an error or annotation message is matched.
#[derive(Debug, Clone)]
pub enum TextMatch {
    /// No message given: anything matches.
    Any,
    /// `msg: <text>`: the message must equal the text (trimmed).
    Exact(String),
    /// `regex: <pattern>`: the pattern must match somewhere in the message.
    Regex(Regex),
}

impl TextMatch {
    /// True when `message` satisfies this match.
    pub fn matches(&self, message: &str) -> bool {
        match self {
            TextMatch::Any => true,
            TextMatch::Exact(m) => m == message,
            TextMatch::Regex(r) => r.is_match(message),
        }
    }

    /// For messages: `message "..."`, `pattern "..."` or `anything`.
    pub fn describe(&self) -> String {
        match self {
            TextMatch::Any => "anything".into(),
            TextMatch::Exact(m) => format!("message {m:?}"),
            TextMatch::Regex(r) => format!("pattern {:?}", r.as_str()),
        }
    }
}

/// What a case expects of one kind of annotation (warnings or infos).
#[derive(Debug, Clone, Default)]
pub struct AnnotationExpectation {
    /// `eval_warn` / `eval_info`: at least one annotation of this kind.
    pub at_least_one: bool,
    /// `expect warn|info [msg:|regex:]` lines: each must match an annotation, and every
    /// annotation of this kind must match one of them.
    pub expected: Vec<TextMatch>,
    /// `expect no_warn|no_info`: no annotation of this kind.
    pub forbidden: bool,
}

/// An expected series of an `eval`.
#[derive(Debug, Clone)]
pub struct ExpectedSeries {
    /// 1-based line.
    pub line: usize,
    /// 1-based position among the block's lines (what `expect ordered` checks).
    pub pos: usize,
    /// Exact labels of the result series.
    pub labels: Labels,
    /// Expected values: one for an instant vector, one per step for a matrix.
    pub values: Vec<SeqValue>,
}

/// The expected result of an `eval`. With neither series, scalar nor string given, the result
/// must be empty (an empty vector or matrix, or an empty string).
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Expected series (a vector or matrix result).
    pub series: Vec<ExpectedSeries>,
    /// A scalar line: the result must be a scalar (or, in range mode, its one series).
    pub scalar: Option<f64>,
    /// `expect string "..."`.
    pub string: Option<String>,
}

/// One `eval` command: the query, when it runs, and everything it expects.
#[derive(Debug, Clone)]
pub struct EvalCase {
    /// 1-based line of the `eval` command.
    pub line: usize,
    /// The PromQL query, as written.
    pub query: String,
    /// Instant or range, with times.
    pub kind: EvalKind,
    /// `eval_ordered` / `expect ordered`: vector elements must come in the expected order.
    pub ordered: bool,
    /// `eval_fail` / `expect fail`: the query must fail.
    pub expect_fail: bool,
    /// Messages or patterns the error must match (all of them).
    pub fail_checks: Vec<TextMatch>,
    /// Warning expectations.
    pub warn: AnnotationExpectation,
    /// Info expectations.
    pub info: AnnotationExpectation,
    /// The expected result.
    pub expected: Expected,
    /// `expect range vector ...`, for instant queries returning a matrix.
    pub range_vector: Option<RangeWindow>,
    /// Set by `expect range vector` and `expect string`: no range-mode check.
    pub exclude_from_range_check: bool,
}

/// Parses a script. Errors name the line and what is wrong with it.
pub fn parse_script(text: &str) -> Result<Script, ScriptError> {
    parse::parse_script(text)
}

/// One case that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// 1-based line of the `eval` (or of a script error).
    pub line: usize,
    /// The query (`<script>` for a script that does not parse).
    pub query: String,
    /// Why it failed or was skipped.
    pub reason: String,
}

/// The outcome of one script file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file's name.
    pub file: String,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed, in file order.
    pub failed: Vec<CaseResult>,
    /// Cases that were skipped, in file order.
    pub skipped: Vec<CaseResult>,
}

impl FileReport {
    /// Number of cases run or skipped.
    pub fn total(&self) -> usize {
        self.passed + self.failed.len() + self.skipped.len()
    }
}

impl fmt::Display for FileReport {
    /// `file: N passed, M failed, K skipped`, then one `  line L: query: reason` per failure
    /// and then per skip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} passed, {} failed, {} skipped",
            self.file,
            self.passed,
            self.failed.len(),
            self.skipped.len()
        )?;
        let one_line = |s: &str| s.replace('\n', "\\n");
        for (title, cases) in [("failed", &self.failed), ("skipped", &self.skipped)] {
            if !cases.is_empty() {
                writeln!(f, " {title}:")?;
            }
            for c in cases {
                writeln!(
                    f,
                    "  line {}: {}: {}",
                    c.line,
                    one_line(&c.query),
                    one_line(&c.reason)
                )?;
            }
        }
        Ok(())
    }
}

/// Parses and runs a script against a fresh [`MemStorage`](crate::MemStorage) and
/// [`Engine`](crate::Engine) with default options. A script that does not parse is reported
/// as one failure at the offending line.
pub fn run_script(name: &str, text: &str) -> FileReport {
    match parse_script(text) {
        Ok(script) => run::run(name, &script),
        Err(e) => FileReport {
            file: name.to_string(),
            passed: 0,
            failed: vec![CaseResult {
                line: e.line,
                query: "<script>".into(),
                reason: format!("script does not parse: {}", e.message),
            }],
            skipped: Vec::new(),
        },
    }
}

/// Reads and runs one script file; the report is named after the file name.
pub fn run_file(path: &Path) -> io::Result<FileReport> {
    let text = std::fs::read_to_string(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(run_script(&name, &text))
}
