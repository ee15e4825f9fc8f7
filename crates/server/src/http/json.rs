//! JSON text written straight into an answer's buffer: large answers (query results, exports,
//! metadata) are not built as a `serde_json::Value` tree first.

use strata_model::Labels;

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
