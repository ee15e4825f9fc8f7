//! The Go `text/template` language of alert labels and annotations, as Prometheus uses it:
//! `{{ $labels.instance }}`, `{{ $value | humanize }}`, `{{ if gt $value 1.0 }}...{{ end }}`.
//! [`Template::parse`] checks what `promtool` checks: actions closed, strings terminated,
//! `if`/`range`/`with`/`define`/`block` matched by `end`, `else` only inside them, every
//! function one Go's templates or Prometheus define. [`Template::expand`] runs the part alert
//! templates use: text, `$labels`/`.Labels`, `$value`/`.Value`, `$externalLabels`,
//! `$externalURL`, variables, pipelines, parentheses, `if`/`else if`/`else`, trim markers, and
//! the functions `humanize*`, `printf`, `print`, `toUpper`, `toLower`, `title`, comparisons,
//! `and`/`or`/`not`, `len`, formatting numbers as Go does; `range`, `with`, `template` and the
//! functions that query are an error naming them, for now. Written here because no maintained
//! Rust crate implements Go templates.

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
    Template::parse(text).map(|_| ())
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    /// Prints its pipeline's value (nothing when it declares a variable).
    Action(Pipe),
    If {
        cond: Pipe,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    /// `range`, `with`, `define`, `block`, `template`: checked, not expanded yet.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Pipe {
    /// `$x :=` (or `$x =`) in front.
    decl: Option<String>,
    /// Stages; each stage after the first gets the previous one's value as its last argument.
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Func(String),
    /// `$name.field...`.
    Var(String, Vec<String>),
    /// `.Field...` of the data (empty: the data itself).
    Field(Vec<String>),
    Str(String),
    Num(f64),
    Bool(bool),
    Nil,
    Sub(Pipe),
}

/// A block being parsed.
struct Frame {
    kind: String,
    cond: Option<Pipe>,
    then: Vec<Node>,
    otherwise: Option<Vec<Node>>,
    /// Opened by `{{ else if }}`: closed by the `end` of the block it continues.
    chained: bool,
}

impl Frame {
    fn nodes(&mut self) -> &mut Vec<Node> {
        match &mut self.otherwise {
            Some(o) => o,
            None => &mut self.then,
        }
    }

    fn finish(self) -> Node {
        match self.cond {
            Some(cond) if self.kind == "if" => Node::If {
                cond,
                then: self.then,
                otherwise: self.otherwise.unwrap_or_default(),
            },
            _ => Node::Unsupported(self.kind),
        }
    }
}

impl Template {
    /// Parses `text`: actions closed, strings terminated, blocks matched by `end`, `else`
    /// only inside them, every function one Go's templates or Prometheus define.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let err = |m: String| Err(TemplateError(m));
        let mut root: Vec<Node> = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        fn push(stack: &mut [Frame], root: &mut Vec<Node>, n: Node) {
            match stack.last_mut() {
                Some(f) => f.nodes().push(n),
                None => root.push(n),
            }
        }
        loop {
            let at = rest.find("{{");
            let mut lead = &rest[..at.unwrap_or(rest.len())];
            if trim_next {
                lead = lead.trim_start();
            }
            let Some(at) = at else {
                if !lead.is_empty() {
                    push(&mut stack, &mut root, Node::Text(lead.to_string()));
                }
                break;
            };
            let action = &rest[at + 2..];
            let trim_before = action.starts_with("- ") || action.starts_with("-\n");
            if trim_before {
                lead = lead.trim_end();
            }
            if !lead.is_empty() {
                push(&mut stack, &mut root, Node::Text(lead.to_string()));
            }
            // A comment runs to `*/` and may hold `}}`.
            let opened = action.trim_start_matches('-').trim_start();
            if let Some(comment) = opened.strip_prefix("/*") {
                let close = comment.find("*/").and_then(|i| {
                    let after = comment[i + 2..].trim_start();
                    let trimmed = after.strip_prefix('-').map(str::trim_start);
                    trim_next = trimmed.is_some();
                    trimmed.unwrap_or(after).strip_prefix("}}")
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
            let raw = &action[..end];
            trim_next = raw.ends_with(" -") || raw.ends_with("\n-");
            let body = raw.trim_start_matches('-').trim_end_matches('-').trim();
            rest = &action[end + 2..];
            let words = tokens(body)?;
            match words.first().copied() {
                None => return err("missing value for command".into()),
                Some(w) if BLOCKS.contains(&w) => {
                    let cond = pipe(&words[1..])?;
                    stack.push(Frame {
                        kind: w.to_string(),
                        cond: Some(cond),
                        then: Vec::new(),
                        otherwise: None,
                        chained: false,
                    });
                }
                Some("end") => loop {
                    let Some(f) = stack.pop() else {
                        return err("unexpected {{end}}".into());
                    };
                    let chained = f.chained;
                    let node = f.finish();
                    push(&mut stack, &mut root, node);
                    if !chained {
                        break;
                    }
                },
                Some("else") => {
                    let Some(f) = stack.last_mut().filter(|f| {
                        matches!(f.kind.as_str(), "if" | "range" | "with") && f.otherwise.is_none()
                    }) else {
                        return err("unexpected {{else}}".into());
                    };
                    f.otherwise = Some(Vec::new());
                    if words.get(1) == Some(&"if") {
                        let cond = pipe(&words[2..])?;
                        stack.push(Frame {
                            kind: "if".into(),
                            cond: Some(cond),
                            then: Vec::new(),
                            otherwise: None,
                            chained: true,
                        });
                    }
                }
                Some(w @ ("template" | "break" | "continue")) => {
                    push(&mut stack, &mut root, Node::Unsupported(w.to_string()))
                }
                _ => {
                    let p = pipe(&words)?;
                    push(&mut stack, &mut root, Node::Action(p));
                }
            }
        }
        match stack.last() {
            Some(f) => err(format!(
                "unexpected EOF: {{{{{}}}}} without {{{{end}}}}",
                f.kind
            )),
            None => Ok(Template { nodes: root }),
        }
    }
}

/// A pipeline from an action's words.
fn pipe(words: &[&str]) -> Result<Pipe, TemplateError> {
    let (decl, words) = match words {
        [v, op, rest @ ..] if v.starts_with('$') && (*op == ":=" || *op == "=") => {
            (Some(v[1..].to_string()), rest)
        }
        _ => (None, words),
    };
    let mut cmds = vec![Vec::new()];
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        let arg = match w {
            "|" => {
                cmds.push(Vec::new());
                continue;
            }
            "(" => {
                let mut depth = 1;
                let start = i;
                while i < words.len() && depth > 0 {
                    depth += match words[i] {
                        "(" => 1,
                        ")" => -1,
                        _ => 0,
                    };
                    i += 1;
                }
                if depth > 0 {
                    return Err(TemplateError("unclosed left paren".into()));
                }
                Arg::Sub(pipe(&words[start..i - 1])?)
            }
            ")" => return Err(TemplateError("unexpected right paren".into())),
            _ => arg(w)?,
        };
        let cmd = cmds.last_mut().expect("one stage at least");
        if cmd.is_empty() {
            if let Arg::Func(name) = &arg {
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err(TemplateError(format!("function {name:?} not defined")));
                }
            }
        } else if matches!(arg, Arg::Func(_)) {
            return Err(TemplateError(format!(
                "function {w:?} used as an argument (wrap it in parentheses)"
            )));
        }
        cmd.push(arg);
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err(TemplateError("missing value for command".into()));
    }
    Ok(Pipe { decl, cmds })
}

/// One word of a pipeline.
fn arg(w: &str) -> Result<Arg, TemplateError> {
    let bad = || TemplateError(format!("bad word {w:?}"));
    Ok(match w.as_bytes()[0] {
        b'"' => Arg::Str(unquote(&w[1..w.len() - 1]).ok_or_else(bad)?),
        b'`' => Arg::Str(w[1..w.len() - 1].to_string()),
        b'\'' => {
            let ch = unquote(&w[1..w.len() - 1]).ok_or_else(bad)?;
            let mut c = ch.chars();
            match (c.next(), c.next()) {
                (Some(ch), None) => Arg::Num(f64::from(u32::from(ch))),
                _ => return Err(bad()),
            }
        }
        b'$' => {
            let mut parts = w[1..].split('.');
            let name = parts.next().unwrap_or_default().to_string();
            Arg::Var(name, parts.map(str::to_string).collect())
        }
        b'.' => Arg::Field(
            w[1..]
                .split('.')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        b'0'..=b'9' | b'-' | b'+' => Arg::Num(w.parse().map_err(|_| bad())?),
        _ => match w {
            "true" => Arg::Bool(true),
            "false" => Arg::Bool(false),
            "nil" => Arg::Nil,
            _ if is_identifier(w) => Arg::Func(w.to_string()),
            _ => return Err(bad()),
        },
    })
}

/// A Go double-quoted string's contents, unescaped (the common escapes).
fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match it.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '\\' => '\\',
            '"' => '"',
            '\'' => '\'',
            _ => return None,
        });
    }
    Some(out)
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

/// What an alert's templates see: `$labels` (`.Labels`), `$externalLabels`, `$externalURL`
/// and `$value` (`.Value`), as Prometheus gives them.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    /// The alert's labels (for its labels' templates, the series' labels).
    pub labels: &'a strata_model::Labels,
    /// The server's external labels.
    pub external_labels: &'a strata_model::Labels,
    /// The server's external URL.
    pub external_url: &'a str,
    /// The alert's value.
    pub value: f64,
}

/// A value inside a template.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Num(f64),
    Bool(bool),
    Labels(strata_model::Labels),
    Nil,
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Num(n) => *n != 0.0,
            Val::Bool(b) => *b,
            Val::Labels(l) => !l.is_empty(),
            Val::Nil => false,
        }
    }

    /// As Go's `fmt.Sprint` prints it.
    fn print(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(n) => go_shortest(*n),
            Val::Bool(b) => b.to_string(),
            Val::Labels(l) => {
                let pairs: Vec<String> = l
                    .iter()
                    .map(|x| format!("{}:{}", x.name, x.value))
                    .collect();
                format!("map[{}]", pairs.join(" "))
            }
            Val::Nil => "<no value>".into(),
        }
    }

    /// As Prometheus' `convertToFloat` takes it.
    fn float(&self) -> Result<f64, TemplateError> {
        match self {
            Val::Num(n) => Ok(*n),
            Val::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| TemplateError(format!("can't convert {s:?} to float"))),
            other => Err(TemplateError(format!(
                "can't convert {} to float",
                other.print()
            ))),
        }
    }
}

impl Template {
    /// The template expanded with `data`. `range`, `with`, `define`, `template` and the
    /// functions that query or match are not expanded yet: an error says which.
    pub fn expand(&self, data: &Data<'_>) -> Result<String, TemplateError> {
        let mut vars: Vec<(String, Val)> = vec![
            ("labels".into(), Val::Labels(data.labels.clone())),
            (
                "externalLabels".into(),
                Val::Labels(data.external_labels.clone()),
            ),
            ("externalURL".into(), Val::Str(data.external_url.into())),
            ("value".into(), Val::Num(data.value)),
        ];
        let mut out = String::new();
        run(&self.nodes, data, &mut vars, &mut out)?;
        Ok(out)
    }
}

/// Expands `text` with `data` (see [`Template::expand`]).
pub fn expand(text: &str, data: &Data<'_>) -> Result<String, TemplateError> {
    Template::parse(text)?.expand(data)
}

fn run(
    nodes: &[Node],
    data: &Data<'_>,
    vars: &mut Vec<(String, Val)>,
    out: &mut String,
) -> Result<(), TemplateError> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => {
                let v = eval_pipe(p, data, vars)?;
                match &p.decl {
                    Some(name) => vars.push((name.clone(), v)),
                    None => out.push_str(&v.print()),
                }
            }
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                let branch = if eval_pipe(cond, data, vars)?.truthy() {
                    then
                } else {
                    otherwise
                };
                let scope = vars.len();
                run(branch, data, vars, out)?;
                vars.truncate(scope);
            }
            Node::Unsupported(what) => {
                return Err(TemplateError(format!(
                    "{{{{{what}}}}} is not supported yet"
                )))
            }
        }
    }
    Ok(())
}

fn eval_pipe(p: &Pipe, data: &Data<'_>, vars: &[(String, Val)]) -> Result<Val, TemplateError> {
    let mut prev: Option<Val> = None;
    for cmd in &p.cmds {
        let (head, args) = cmd.split_first().expect("stages are not empty");
        let mut values = args
            .iter()
            .map(|a| value(a, data, vars))
            .collect::<Result<Vec<Val>, TemplateError>>()?;
        values.extend(prev.take());
        prev = Some(match head {
            Arg::Func(name) => call(name, values)?,
            other if values.is_empty() => value(other, data, vars)?,
            _ => {
                return Err(TemplateError(
                    "can't give an argument to a non-function".into(),
                ))
            }
        });
    }
    Ok(prev.unwrap_or(Val::Nil))
}

fn value(a: &Arg, data: &Data<'_>, vars: &[(String, Val)]) -> Result<Val, TemplateError> {
    Ok(match a {
        Arg::Str(s) => Val::Str(s.clone()),
        Arg::Num(n) => Val::Num(*n),
        Arg::Bool(b) => Val::Bool(*b),
        Arg::Nil => Val::Nil,
        Arg::Sub(p) => eval_pipe(p, data, vars)?,
        Arg::Func(name) => call(name, Vec::new())?,
        Arg::Var(name, path) if name.is_empty() => root_field(data, path)?,
        Arg::Var(name, path) => {
            let (_, v) = vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .ok_or_else(|| TemplateError(format!("undefined variable \"${name}\"")))?;
            field(v, path)?
        }
        Arg::Field(path) => root_field(data, path)?,
    })
}

/// `path` (field names) of `v`: a label of a label set (missing: empty), or `v` itself.
fn field(v: &Val, path: &[String]) -> Result<Val, TemplateError> {
    match (v, path) {
        (v, []) => Ok(v.clone()),
        (Val::Labels(l), [name]) => Ok(Val::Str(l.get(name).unwrap_or_default().to_string())),
        (v, _) => Err(TemplateError(format!(
            "can't evaluate field {} of {}",
            path.join("."),
            v.print()
        ))),
    }
}

/// `.Labels.x`, `.Value` and the like of the data.
fn root_field(data: &Data<'_>, path: &[String]) -> Result<Val, TemplateError> {
    let Some((top, rest)) = path.split_first() else {
        return Err(TemplateError("the data itself is not printable".into()));
    };
    let labels = |l: &strata_model::Labels| match rest {
        [name] => Ok(Val::Str(l.get(name).unwrap_or_default().to_string())),
        _ => field(&Val::Labels(l.clone()), rest),
    };
    match top.as_str() {
        "Labels" => labels(data.labels),
        "ExternalLabels" => labels(data.external_labels),
        "ExternalURL" => field(&Val::Str(data.external_url.into()), rest),
        "Value" => field(&Val::Num(data.value), rest),
        f => Err(TemplateError(format!("can't evaluate field {f}"))),
    }
}

fn call(name: &str, args: Vec<Val>) -> Result<Val, TemplateError> {
    let one = |args: &[Val]| -> Result<Val, TemplateError> {
        match args {
            [v] => Ok(v.clone()),
            _ => Err(TemplateError(format!(
                "wrong number of args for {name}: want 1 got {}",
                args.len()
            ))),
        }
    };
    let cmp = |args: &[Val], f: fn(std::cmp::Ordering) -> bool| -> Result<Val, TemplateError> {
        let [a, b] = args else {
            return Err(TemplateError(format!(
                "wrong number of args for {name}: want 2"
            )));
        };
        let ord = match (a, b) {
            (Val::Str(x), Val::Str(y)) => x.cmp(y),
            _ => a
                .float()?
                .partial_cmp(&b.float()?)
                .ok_or_else(|| TemplateError(format!("{name}: NaN is not ordered")))?,
        };
        Ok(Val::Bool(f(ord)))
    };
    let text = |args: &[Val]| one(args).map(|v| v.print());
    Ok(match name {
        "humanize" => Val::Str(humanize(one(&args)?.float()?)),
        "humanize1024" => Val::Str(humanize1024(one(&args)?.float()?)),
        "humanizeDuration" => Val::Str(humanize_duration(one(&args)?.float()?)),
        "humanizePercentage" => Val::Str(format!("{}%", go_g(one(&args)?.float()? * 100.0, 4))),
        "humanizeTimestamp" => Val::Str(humanize_timestamp(one(&args)?.float()?)),
        "toUpper" => Val::Str(text(&args)?.to_uppercase()),
        "toLower" => Val::Str(text(&args)?.to_lowercase()),
        "title" => Val::Str(title(&text(&args)?)),
        "eq" => cmp(&args, |o| o.is_eq())?,
        "ne" => cmp(&args, |o| o.is_ne())?,
        "lt" => cmp(&args, |o| o.is_lt())?,
        "le" => cmp(&args, |o| o.is_le())?,
        "gt" => cmp(&args, |o| o.is_gt())?,
        "ge" => cmp(&args, |o| o.is_ge())?,
        "not" => Val::Bool(!one(&args)?.truthy()),
        "and" => args
            .iter()
            .find(|v| !v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Val::Nil),
        "or" => args
            .iter()
            .find(|v| v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Val::Nil),
        "len" => match one(&args)? {
            Val::Str(s) => Val::Num(s.len() as f64),
            Val::Labels(l) => Val::Num(l.len() as f64),
            v => return Err(TemplateError(format!("len of {}", v.print()))),
        },
        "print" => Val::Str(args.iter().map(Val::print).collect::<Vec<_>>().join("")),
        "printf" => {
            let Some((Val::Str(f), rest)) = args.split_first() else {
                return Err(TemplateError("printf needs a format string first".into()));
            };
            Val::Str(printf(f, rest))
        }
        other => {
            return Err(TemplateError(format!(
                "function {other:?} is not supported yet"
            )))
        }
    })
}

/// Prometheus' `humanize`: SI prefixes, 4 significant digits.
fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let (v, prefix) = if v.abs() >= 1.0 {
        scale_up(v, 1000.0, &["k", "M", "G", "T", "P", "E", "Z", "Y"])
    } else {
        scale_down(v)
    };
    format!("{}{prefix}", go_g(v, 4))
}

/// `v` divided by `base` while at least `base`, and the prefix of the last division (Prometheus'
/// loop: at most one per prefix).
fn scale_up(mut v: f64, base: f64, prefixes: &[&'static str]) -> (f64, &'static str) {
    let mut prefix = "";
    for p in prefixes {
        if v.abs() < base {
            break;
        }
        prefix = p;
        v /= base;
    }
    (v, prefix)
}

/// `v` (below 1 in magnitude) times 1000 until at least 1, with its SI prefix (`m` to `y`).
fn scale_down(mut v: f64) -> (f64, &'static str) {
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    (v, prefix)
}

/// Prometheus' `humanize1024`: binary prefixes from 1 up.
fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let (v, prefix) = scale_up(v, 1024.0, &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]);
    format!("{}{prefix}", go_g(v, 4))
}

/// Prometheus' `humanizeDuration` of seconds.
fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    if v == 0.0 {
        return format!("{}s", go_g(v, 4));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let d = v as i64;
        let (days, hours, minutes, seconds) = (d / 86_400, d / 3600 % 24, d / 60 % 60, d % 60);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_g(v, 4))
        };
    }
    let (v, prefix) = scale_down(v);
    format!("{}{prefix}s", go_g(v, 4))
}

/// Prometheus' `humanizeTimestamp` of Unix seconds: Go's time format, in UTC.
fn humanize_timestamp(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    let ms = (v * 1000.0).round() as i64;
    let t = strata_model::time::format_rfc3339_ms(ms);
    // 2006-01-02T15:04:05.123Z -> 2006-01-02 15:04:05.123 +0000 UTC
    let t = t.trim_end_matches('Z').replacen('T', " ", 1);
    let t = match t.split_once('.') {
        Some((s, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                s.to_string()
            } else {
                format!("{s}.{frac}")
            }
        }
        None => t,
    };
    format!("{t} +0000 UTC")
}

/// Go's `strings.Title`: each word's first letter upper-cased.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric() && c != '_' && c != '\'';
    }
    out
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(v, 'g', -1, 64)`): shortest digits, in `%e`
/// form when the exponent is below -4 or at least 6 (`1e+06`, `123456`).
fn go_shortest(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    // Rust's `{:e}` gives the shortest round-trip digits.
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("a number");
    if !(-4..6).contains(&exp) {
        go_exponent(mantissa, exp)
    } else {
        format!("{v}")
    }
}

/// Go's `%.<prec>g`.
fn go_g(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let prec = prec.max(1);
    let e = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = e.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("a number");
    if exp < -4 || exp >= prec as i32 {
        let m = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        go_exponent(m, exp)
    } else {
        let decimals = (prec as i32 - 1 - exp).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// `NaN`, `+Inf`, `-Inf` as Go prints them.
fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else {
        None
    }
}

/// `mantissa` and `exp` in Go's exponent form: `e+06`, `e-07`.
fn go_exponent(mantissa: &str, exp: i32) -> String {
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %d %f %e %g %q %%`, with flags,
/// width and precision.
fn printf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut it = format.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = it.peek().filter(|f| "-+ 0#".contains(**f)) {
            flags.push(f);
            it.next();
        }
        let mut width = String::new();
        while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            it.next();
        }
        let mut prec: Option<usize> = None;
        if it.peek() == Some(&'.') {
            it.next();
            let mut p = String::new();
            while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                it.next();
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = it.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let body = match (verb, arg) {
            ('v' | 's', v) if !matches!(v, Val::Num(_)) || verb == 'v' => match (v, prec) {
                (Val::Str(s), Some(p)) => s.chars().take(p).collect(),
                (v, _) => v.print(),
            },
            ('d', Val::Num(n)) if n.fract() == 0.0 && n.is_finite() => format!("{}", *n as i64),
            ('f' | 'F', Val::Num(n)) => {
                special(*n).unwrap_or_else(|| format!("{:.*}", prec.unwrap_or(6), n))
            }
            ('e', Val::Num(n)) => special(*n).unwrap_or_else(|| {
                let e = format!("{:.*e}", prec.unwrap_or(6), n);
                let (m, x) = e.split_once('e').expect("an exponent");
                go_exponent(m, x.parse().expect("a number"))
            }),
            ('g', Val::Num(n)) => match prec {
                Some(p) => go_g(*n, p),
                None => go_shortest(*n),
            },
            ('q', Val::Str(s)) => format!("{s:?}"),
            (verb, Val::Num(n)) => format!("%!{verb}(float64={})", go_shortest(*n)),
            (verb, v) => format!("%!{verb}(string={})", v.print()),
        };
        let width: usize = width.parse().unwrap_or(0);
        let pad = width.saturating_sub(body.chars().count());
        let (body, sign) = match (flags.contains('+'), body.starts_with('-')) {
            (true, false) if matches!(arg, Val::Num(_)) => (body, "+"),
            _ => (body, ""),
        };
        let pad = pad.saturating_sub(sign.len());
        if flags.contains('-') {
            out.push_str(sign);
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if flags.contains('0') && matches!(arg, Val::Num(_)) {
            let (neg, digits) = match body.strip_prefix('-') {
                Some(d) => ("-", d.to_string()),
                None => ("", body.clone()),
            };
            out.push_str(sign);
            out.push_str(neg);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(&digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(sign);
            out.push_str(&body);
        }
    }
    if args.next().is_some() {
        out.push_str("%!(EXTRA)");
    }
    out
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
    fn templates_expand_as_prometheus_expands_them() {
        use super::{expand, Data};
        let labels =
            strata_model::Labels::from_pairs([("instance", "host:9100"), ("job", "node")]).unwrap();
        let ext = strata_model::Labels::from_pairs([("site", "s1")]).unwrap();
        let data = |value| Data {
            labels: &labels,
            external_labels: &ext,
            external_url: "http://strata:9464",
            value,
        };
        for (t, value, want) in [
            (
                "{{ $labels.instance }} of {{ .Labels.job }} down",
                1.0,
                "host:9100 of node down",
            ),
            ("{{ $labels.missing }}|", 1.0, "|"),
            ("{{ $value }}", 0.5, "0.5"),
            ("{{ $value }}", 1e6, "1e+06"),
            ("{{ $value }}", 123456.0, "123456"),
            ("{{ $value }}", 1.0 / 3.0, "0.3333333333333333"),
            ("{{ .Value }}", 2.0, "2"),
            ("{{ $value | humanize }}", 1234567.0, "1.235M"),
            ("{{ humanize $value }}", 0.0012, "1.2m"),
            ("{{ humanize 0 }}", 0.0, "0"),
            ("{{ $value | humanize1024 }}", 1048576.0, "1Mi"),
            ("{{ $value | humanizePercentage }}", 0.123456, "12.35%"),
            ("{{ $value | humanizeDuration }}", 90061.0, "1d 1h 1m 1s"),
            ("{{ $value | humanizeDuration }}", 1.5, "1.5s"),
            ("{{ $value | humanizeDuration }}", 0.25, "250ms"),
            (
                "{{ $value | humanizeTimestamp }}",
                1_700_000_000.5,
                "2023-11-14 22:13:20.5 +0000 UTC",
            ),
            ("{{ printf \"%.2f\" $value }}%", 99.456, "99.46%"),
            ("{{ printf \"%d items, %s\" 3 \"ok\" }}", 0.0, "3 items, ok"),
            (
                "{{ printf \"%5.1f|%-4s|\" $value \"a\" }}",
                2.25,
                "  2.2|a   |",
            ),
            (
                "{{ if gt $value 80.0 }}hot{{ else if gt $value 50.0 }}warm{{ else }}cold{{ end }}",
                90.0,
                "hot",
            ),
            (
                "{{ if gt $value 80.0 }}hot{{ else if gt $value 50.0 }}warm{{ else }}cold{{ end }}",
                60.0,
                "warm",
            ),
            (
                "{{ if gt $value 80.0 }}hot{{ else if gt $value 50.0 }}warm{{ else }}cold{{ end }}",
                10.0,
                "cold",
            ),
            (
                "{{ if and (eq $labels.job \"node\") (lt $value 1.0) }}y{{ end }}",
                0.5,
                "y",
            ),
            ("a  {{- \"b\" -}}  c", 0.0, "abc"),
            ("{{ $x := toUpper $labels.job }}{{ $x }}", 0.0, "NODE"),
            (
                "{{ $externalLabels.site }} {{ $externalURL }}",
                0.0,
                "s1 http://strata:9464",
            ),
            ("{{ title \"disk full\" }}", 0.0, "Disk Full"),
            ("{{/* hidden */}}shown", 0.0, "shown"),
        ] {
            assert_eq!(expand(t, &data(value)).as_deref(), Ok(want), "{t}");
        }
        let e = expand("{{ range query \"up\" }}{{ end }}", &data(0.0)).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = expand("{{ $nope }}", &data(0.0)).unwrap_err();
        assert!(e.to_string().contains("undefined variable"), "{e}");
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
