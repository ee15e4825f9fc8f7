//! The stream's messages, as JSON text frames.
//!
//! A client sends one object per frame:
//! `{"subscribe":{"id":"<its name>","kind":"readings","selector":"temperature{site=\"s1\"}"}}`
//! (with `"since":{"epoch":E,"offset":O}` to resume after the last message it received, or
//! `"snapshot":true` to start from the current state; with
//! `"expr"` instead of `"selector"` for `kind: "query"`), or `{"unsubscribe":{"id":"..."}}`.
//! Every server message is one object with `id` (the subscription), `kind`, `epoch`,
//! `offset` and `labels`, and the fields of its kind; an error is `{"error":"...","id":...}`.
//! The selector and expression stay text here: the server parses them with PromQL's grammar.

use crate::Position;
use serde::{Deserialize, Serialize};

/// Longest subscription id accepted.
pub const MAX_ID_LEN: usize = 128;

/// What a subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Each stored sample of the selected series.
    Readings,
    /// Each state of the selected series' 1-minute windows: provisional, final, corrected.
    Windows,
    /// Group rollups' windows.
    Groups,
    /// Alert state changes.
    Alerts,
    /// Anomaly events.
    Anomalies,
    /// Device shadow changes.
    Shadows,
    /// A PromQL expression's result at each window close.
    Query,
}

impl Kind {
    /// Every kind, as a client names it.
    pub const ALL: [&'static str; 7] = [
        "readings",
        "windows",
        "groups",
        "alerts",
        "anomalies",
        "shadows",
        "query",
    ];
}

/// One subscription a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The client's name for it, echoed in every message it receives.
    pub id: String,
    /// What it receives.
    pub kind: Kind,
    /// The series selector (the PromQL expression for [`Kind::Query`]); `None` selects every
    /// alert, anomaly or shadow of the tenant.
    pub selector: Option<String>,
    /// Where to resume: messages after it, or a snapshot when they are no longer kept.
    pub since: Option<Position>,
    /// Whether a subscription without `since` starts with a snapshot of the current state
    /// (a page that draws the last hour, then follows it).
    pub snapshot: bool,
}

/// A client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Starts a subscription (or replaces the one with the same id).
    Subscribe(Subscribe),
    /// Ends a subscription.
    Unsubscribe {
        /// Its id.
        id: String,
    },
}

/// Why a client's message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The subscription it named, when that much was readable.
    pub id: Option<String>,
    /// What was wrong, for the client.
    pub message: String,
    /// Whether the connection is closed after the error (an oversized frame) or kept.
    pub fatal: bool,
}

impl RequestError {
    fn kept(id: Option<&str>, message: impl Into<String>) -> RequestError {
        RequestError {
            id: id.map(str::to_string),
            message: message.into(),
            fatal: false,
        }
    }

    /// The error message's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::json!({"error": self.message, "id": self.id}).to_string()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    subscribe: Option<WireSubscribe>,
    unsubscribe: Option<WireUnsubscribe>,
}

#[derive(Deserialize)]
struct WireSubscribe {
    id: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    selector: Option<String>,
    expr: Option<String>,
    since: Option<WirePosition>,
    snapshot: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePosition {
    epoch: u64,
    offset: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireUnsubscribe {
    id: String,
}

/// Parses one frame of at most `max_bytes` (a larger one is a fatal error).
pub fn parse_request(text: &str, max_bytes: usize) -> Result<Request, RequestError> {
    if text.len() > max_bytes {
        return Err(RequestError {
            id: None,
            message: format!(
                "message of {} bytes is over the limit of {max_bytes}",
                text.len()
            ),
            fatal: true,
        });
    }
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        RequestError::kept(
            None,
            format!(
                "invalid message: {e} (expected {{\"subscribe\":{{...}}}} or {{\"unsubscribe\":{{...}}}})"
            ),
        )
    })?;
    match (wire.subscribe, wire.unsubscribe) {
        (Some(s), None) => subscribe(s).map(Request::Subscribe),
        (None, Some(u)) => {
            check_id(&u.id)?;
            Ok(Request::Unsubscribe { id: u.id })
        }
        _ => Err(RequestError::kept(
            None,
            "a message holds exactly one of \"subscribe\" or \"unsubscribe\"",
        )),
    }
}

fn check_id(id: &str) -> Result<(), RequestError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(RequestError::kept(
            None,
            format!("subscription id must be 1 to {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

fn subscribe(s: WireSubscribe) -> Result<Subscribe, RequestError> {
    let id = match s.id {
        Some(serde_json::Value::String(id)) => id,
        _ => return Err(RequestError::kept(None, "subscribe needs an \"id\" string")),
    };
    check_id(&id)?;
    let err = |m: String| Err(RequestError::kept(Some(&id), m));
    let kind = match s.kind {
        Some(serde_json::Value::String(k)) => {
            match serde_json::from_value::<Kind>(serde_json::Value::String(k.clone())) {
                Ok(kind) => kind,
                Err(_) => {
                    return err(format!(
                        "unknown kind {k:?}: expected one of {}",
                        Kind::ALL.join(", ")
                    ))
                }
            }
        }
        _ => return err("subscribe needs a \"kind\" string".into()),
    };
    let selector = match (kind, s.selector, s.expr) {
        (Kind::Query, None, Some(e)) => Some(e),
        (Kind::Query, _, _) => {
            return err("kind \"query\" needs an \"expr\" (and no \"selector\")".into())
        }
        (_, _, Some(_)) => return err("\"expr\" is for kind \"query\"; use \"selector\"".into()),
        (Kind::Readings | Kind::Windows | Kind::Groups, None, None) => {
            return err(format!("kind {:?} needs a \"selector\"", kind.name()))
        }
        (_, sel, None) => sel,
    };
    Ok(Subscribe {
        id,
        kind,
        selector,
        since: s.since.map(|p| Position {
            epoch: p.epoch,
            offset: p.offset,
        }),
        snapshot: s.snapshot.unwrap_or(false),
    })
}

impl Kind {
    /// The kind as a client names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Readings => "readings",
            Kind::Windows => "windows",
            Kind::Groups => "groups",
            Kind::Alerts => "alerts",
            Kind::Anomalies => "anomalies",
            Kind::Shadows => "shadows",
            Kind::Query => "query",
        }
    }
}

/// One server message: the envelope every kind shares (`id`, `kind`, `epoch`, `offset`),
/// then the fields of `body`, the text of a JSON object holding `labels` and the kind's own
/// fields. The body is rendered once per update and shared by every subscription receiving it.
pub fn message(id: &str, kind: Kind, at: Position, body: &str) -> String {
    use std::fmt::Write;
    let fields = body.strip_prefix('{').unwrap_or(body);
    let mut out = String::with_capacity(body.len() + id.len() + 64);
    out.push_str("{\"id\":");
    out.push_str(&serde_json::to_string(id).expect("a string serializes"));
    let _ = write!(
        out,
        ",\"kind\":\"{}\",\"epoch\":{},\"offset\":{}",
        kind.name(),
        at.epoch,
        at.offset
    );
    if fields != "}" {
        out.push(',');
    }
    out.push_str(fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> RequestError {
        parse_request(text, 4096).unwrap_err()
    }

    #[test]
    fn subscriptions_parse_as_documented() {
        let r = parse_request(
            r#"{"subscribe":{"id":"t","kind":"windows","selector":"temperature{site=\"s1\"}","since":{"epoch":3,"offset":41}}}"#,
            4096,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Subscribe(Subscribe {
                id: "t".into(),
                kind: Kind::Windows,
                selector: Some(r#"temperature{site="s1"}"#.into()),
                since: Some(Position {
                    epoch: 3,
                    offset: 41
                }),
                snapshot: false,
            })
        );
        let snap = parse_request(
            r#"{"subscribe":{"id":"s","kind":"readings","selector":"t","snapshot":true}}"#,
            4096,
        );
        assert!(matches!(
            snap,
            Ok(Request::Subscribe(Subscribe { snapshot: true, .. }))
        ));
        let q = parse_request(
            r#"{"subscribe":{"id":"q","kind":"query","expr":"avg(t)"}}"#,
            4096,
        );
        assert!(matches!(
            q,
            Ok(Request::Subscribe(Subscribe {
                kind: Kind::Query,
                ..
            }))
        ));
        let a = parse_request(r#"{"subscribe":{"id":"a","kind":"alerts"}}"#, 4096).unwrap();
        assert!(matches!(
            a,
            Request::Subscribe(Subscribe { selector: None, .. })
        ));
        assert_eq!(
            parse_request(r#"{"unsubscribe":{"id":"t"}}"#, 4096).unwrap(),
            Request::Unsubscribe { id: "t".into() }
        );
    }

    #[test]
    fn bad_messages_name_the_problem() {
        for (text, want, id) in [
            ("not json", "invalid message", None),
            (r#"{"hello":1}"#, "invalid message", None),
            ("{}", "exactly one", None),
            (r#"{"subscribe":{"kind":"readings"}}"#, "\"id\"", None),
            (
                r#"{"subscribe":{"id":"","kind":"readings"}}"#,
                "1 to 128",
                None,
            ),
            (
                r#"{"subscribe":{"id":"x","kind":"everything","selector":"up"}}"#,
                "unknown kind \"everything\"",
                Some("x"),
            ),
            (
                r#"{"subscribe":{"id":"x","kind":"readings"}}"#,
                "needs a \"selector\"",
                Some("x"),
            ),
            (
                r#"{"subscribe":{"id":"x","kind":"query","selector":"up"}}"#,
                "needs an \"expr\"",
                Some("x"),
            ),
            (
                r#"{"subscribe":{"id":"x","kind":"readings","expr":"up"}}"#,
                "for kind \"query\"",
                Some("x"),
            ),
            (
                r#"{"subscribe":{"id":"x","kind":"readings","selector":"up","since":{"epoch":-1,"offset":0}}}"#,
                "invalid message",
                None,
            ),
        ] {
            let e = refused(text);
            assert!(e.message.contains(want), "{text}: {e:?}");
            assert_eq!(e.id.as_deref(), id, "{text}");
            assert!(!e.fatal, "{text}");
        }
        let big = format!(r#"{{"subscribe":{{"id":"{}"}}}}"#, "x".repeat(5000));
        let e = refused(&big);
        assert!(
            e.fatal && e.message.contains("over the limit of 4096"),
            "{e:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&refused("{}").to_json()).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        assert!(v["error"].as_str().unwrap().contains("exactly one"));
    }

    #[test]
    fn messages_share_one_envelope() {
        let at = Position {
            epoch: 3,
            offset: 42,
        };
        let body = r#"{"labels":{"__name__":"temperature","device":"d1"},"timestamp":1700000000000,"value":20.5}"#;
        let v: serde_json::Value =
            serde_json::from_str(&message("t\"1", Kind::Readings, at, body)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "t\"1", "kind": "readings", "epoch": 3, "offset": 42,
                "labels": {"__name__": "temperature", "device": "d1"},
                "timestamp": 1_700_000_000_000i64, "value": 20.5})
        );
        let v: serde_json::Value =
            serde_json::from_str(&message("s", Kind::Shadows, at, "{}")).unwrap();
        assert_eq!(v["offset"], 42);
    }
}
