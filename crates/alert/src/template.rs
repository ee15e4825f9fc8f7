//! The Go `text/template` syntax of alert labels and annotations, as Prometheus uses it:
//! `{{ $labels.instance }}`, `{{ $value | humanize }}`, `{{ if gt $value 1.0 }}...{{ end }}`.
//! So far only checked (for `strata rules check` and rule loading), not expanded: actions
//! closed, strings terminated, `if`/`range`/`with`/`define`/`block` matched by `end`, `else`
//! only inside them, and every function named one Go's templates or Prometheus define.
//! Written here because no maintained Rust crate parses Go templates.

/// Functions a Prometheus alert template may call: Go's builtins and Prometheus' own.
const FUNCTIONS: &[&str] = &[
    // Go text/template builtins.
    "and",
    "call",
    "html",
    "index",
    "slice",
    "js",
    "len",
    "not",
    "or",
    "print",
    "printf",
    "println",
    "urlquery",
    "eq",
    "ge",
    "gt",
    "le",
    "lt",
    "ne",
    // Prometheus (template/template.go).
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "toDuration",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "stripPort",
    "stripDomain",
    "now",
];

/// Words that open a block closed by `{{ end }}`.
const BLOCKS: &[&str] = &["if", "range", "with", "define", "block"];

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(pub String);

/// Checks `text` as a template.
pub fn check(text: &str) -> Result<(), TemplateError> {
    let err = |m: String| Err(TemplateError(m));
    let mut open: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let action = &rest[at + 2..];
        // A comment runs to `*/` and may hold `}}`.
        let lead = action.trim_start_matches('-').trim_start();
        if let Some(comment) = lead.strip_prefix("/*") {
            let close = comment.find("*/").and_then(|i| {
                let after = comment[i + 2..]
                    .trim_start()
                    .trim_start_matches('-')
                    .trim_start();
                after.strip_prefix("}}")
            });
            match close {
                Some(after) => rest = after,
                None => return err("unclosed comment".into()),
            }
            continue;
        }
        let Some(end) = find_close(action)? else {
            return err("unclosed action".into());
        };
        let body = action[..end]
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        rest = &action[end + 2..];
        let words = tokens(body)?;
        match words.first().copied() {
            None => return err("missing value for command".into()),
            Some(w) if BLOCKS.contains(&w) => open.push(w),
            // The guard closes the innermost block; with none open, `end` is an error.
            Some("end") if open.pop().is_none() => return err("unexpected {{end}}".into()),
            Some("else") if !matches!(open.last(), Some(&("if" | "range" | "with"))) => {
                return err("unexpected {{else}}".into())
            }
            _ => {}
        }
        // A command of each pipeline stage: a function, a keyword, a variable, a field or a
        // constant.
        let mut first = true;
        for w in &words {
            if *w == "|" || *w == "(" {
                first = true;
                continue;
            }
            if first && is_identifier(w) && !is_keyword(w) && !FUNCTIONS.contains(w) {
                return err(format!("function {w:?} not defined"));
            }
            first = false;
        }
    }
    match open.last() {
        Some(w) => err(format!("unexpected EOF: {{{{{w}}}}} without {{{{end}}}}")),
        None => Ok(()),
    }
}

/// Where `}}` closes an action starting at `s`, outside quoted strings (`None`: it does not).
fn find_close(s: &str) -> Result<Option<usize>, TemplateError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'`' | b'\'' => i = skip_quoted(b, i)?,
            b'}' if b.get(i + 1) == Some(&b'}') => return Ok(Some(i)),
            _ => i += 1,
        }
    }
    Ok(None)
}

/// The index just past the quoted string starting at `i`.
fn skip_quoted(b: &[u8], i: usize) -> Result<usize, TemplateError> {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if q != b'`' => j += 2,
            c if c == q => return Ok(j + 1),
            b'\n' if q != b'`' => break,
            _ => j += 1,
        }
    }
    Err(TemplateError("unterminated quoted string".into()))
}

/// An action's words: identifiers, variables, fields, constants, strings, `|`, `(` and `)`.
fn tokens(body: &str) -> Result<Vec<&str>, TemplateError> {
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if matches!(c, b'|' | b'(' | b')') {
            out.push(&body[i..i + 1]);
            i += 1;
        } else if matches!(c, b'"' | b'`' | b'\'') {
            let j = skip_quoted(b, i)?;
            out.push(&body[i..j]);
            i = j;
        } else {
            let j = (i..b.len())
                .find(|&j| b[j].is_ascii_whitespace() || matches!(b[j], b'|' | b'(' | b')'))
                .unwrap_or(b.len());
            out.push(&body[i..j]);
            i = j;
        }
    }
    Ok(out)
}

fn is_identifier(w: &str) -> bool {
    let mut b = w.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_keyword(w: &str) -> bool {
    matches!(
        w,
        "if" | "else"
            | "end"
            | "range"
            | "with"
            | "define"
            | "block"
            | "template"
            | "break"
            | "continue"
            | "nil"
            | "true"
            | "false"
    )
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn prometheus_templates_parse() {
        for t in [
            "plain text",
            "{{ $labels.instance }} is down",
            "{{ $value | humanize }}",
            "{{ $value | printf \"%.2f\" }}%",
            "{{- if gt $value 1.0 -}}high{{ else }}low{{ end }}",
            "{{ range query \"up\" }}{{ .Labels.job }} {{ .Value }}{{ end }}",
            "{{ with $labels }}{{ .site }}{{ end }}",
            "{{/* a comment }} */}}",
            "{{ \"}}\" }}",
            "{{ humanizeDuration (toTime $value) }}",
            "{{ $x := 1 }}{{ $x }}",
        ] {
            assert_eq!(check(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn broken_templates_say_why() {
        for (t, why) in [
            ("{{ $labels.instance ", "unclosed action"),
            ("{{ if $value }}x", "without {{end}}"),
            ("x{{ end }}", "unexpected {{end}}"),
            ("{{ else }}", "unexpected {{else}}"),
            ("{{ humanise $value }}", "function \"humanise\" not defined"),
            ("{{ $value | nosuch }}", "function \"nosuch\" not defined"),
            ("{{ \"open }}", "unterminated quoted string"),
            ("{{ }}", "missing value"),
            ("{{/* open }}", "unclosed comment"),
        ] {
            let e = check(t).expect_err(t);
            assert!(e.to_string().contains(why), "{t}: {e}");
        }
    }
}
