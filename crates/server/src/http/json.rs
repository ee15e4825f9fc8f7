//! JSON text written straight into an answer's buffer: large answers (query results, exports,
//! metadata) are not built as a `serde_json::Value` tree first.

use std::fmt::Write;
use strata_model::Labels;
use strata_promql::write_value;

/// `s` as a JSON string.
pub(super) fn write_str(out: &mut String, s: &str) {
    // Serializing a `str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// A label set as a JSON object.
pub(super) fn write_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, lab) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, &lab.name);
        out.push(':');
        write_str(out, &lab.value);
    }
    out.push('}');
}

/// `[<seconds>, "<value>"]`.
pub(super) fn write_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_seconds(out, t);
    out.push_str(",\"");
    write_value(out, v);
    out.push_str("\"]");
}

/// Milliseconds as seconds, formatted as the float `t / 1000` (whole seconds, the usual case,
/// as integers: the same text, faster).
pub(super) fn write_seconds(out: &mut String, t: i64) {
    if t % 1000 == 0 {
        out.push_str(itoa::Buffer::new().format(t / 1000));
    } else {
        let _ = write!(out, "{}", t as f64 / 1000.0);
    }
}
