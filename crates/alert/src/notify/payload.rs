//! Request bodies, as each receiver defines them: Alertmanager's API v2 (`POST /api/v2/alerts`),
//! Alertmanager's webhook payload (version 4) for generic webhooks, Slack incoming webhooks,
//! and PagerDuty's Events API v2.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use strata_model::time::format_rfc3339_ms;
use strata_model::Labels;

/// Go's zero time, which Alertmanager's webhook shows for an alert without an end.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One alert as it is sent: firing, or resolved at `ends_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Stable identity of its labels (as Alertmanager's fingerprint).
    pub fingerprint: u64,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Firing, or resolved.
    pub firing: bool,
    /// When it became active (ms).
    pub starts_at: i64,
    /// When it resolved (ms), for a resolved alert.
    pub resolved_at: Option<i64>,
    /// A link to the rule's expression.
    pub generator_url: String,
}

impl Notice {
    fn status(&self) -> &'static str {
        if self.firing {
            "firing"
        } else {
            "resolved"
        }
    }
}

/// The fingerprint of a label set.
pub fn fingerprint(labels: &Labels) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for l in labels.iter() {
        h.update(l.name.as_bytes());
        h.update(&[0xff]);
        h.update(l.value.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
}

/// A label set as a JSON object.
pub fn labels_json(l: &Labels) -> Value {
    Value::Object(
        l.iter()
            .map(|x| (x.name.clone(), Value::from(x.value.clone())))
            .collect(),
    )
}

/// `POST /api/v2/alerts`: firing alerts valid until `valid_until` (ms, refreshed by resends,
/// as Prometheus sets `endsAt`), resolved ones ending at their resolution.
pub fn alertmanager(notices: &[Notice], valid_until: i64) -> String {
    let alerts: Vec<Value> = notices
        .iter()
        .map(|n| {
            let ends = n.resolved_at.filter(|_| !n.firing).unwrap_or(valid_until);
            json!({
                "labels": labels_json(&n.labels),
                "annotations": n.annotations,
                "startsAt": format_rfc3339_ms(n.starts_at),
                "endsAt": format_rfc3339_ms(ends),
                "generatorURL": n.generator_url,
            })
        })
        .collect();
    Value::Array(alerts).to_string()
}

/// The labels all of `notices` share, and the annotations they share.
fn common(notices: &[Notice]) -> (Map<String, Value>, Map<String, Value>) {
    let mut labels: Map<String, Value> = match notices.first() {
        Some(n) => n
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone().into()))
            .collect(),
        None => Map::new(),
    };
    let mut notes: Map<String, Value> = match notices.first() {
        Some(n) => n
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect(),
        None => Map::new(),
    };
    for n in notices.iter().skip(1) {
        labels.retain(|k, v| n.labels.get(k) == v.as_str());
        notes.retain(|k, v| n.annotations.get(k).map(String::as_str) == v.as_str());
    }
    (labels, notes)
}

/// A group's notification as Alertmanager's webhook receiver sends it (payload version 4).
pub fn webhook(
    receiver: &str,
    group_labels: &Labels,
    notices: &[Notice],
    external_url: &str,
) -> String {
    let (common_labels, common_annotations) = common(notices);
    let firing = notices.iter().any(|n| n.firing);
    let alerts: Vec<Value> = notices
        .iter()
        .map(|n| {
            json!({
                "status": n.status(),
                "labels": labels_json(&n.labels),
                "annotations": n.annotations,
                "startsAt": format_rfc3339_ms(n.starts_at),
                "endsAt": n.resolved_at.filter(|_| !n.firing).map_or(ZERO_TIME.to_string(), format_rfc3339_ms),
                "generatorURL": n.generator_url,
                "fingerprint": format!("{:016x}", n.fingerprint),
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{}", group_key(group_labels)),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": labels_json(group_labels),
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": external_url,
        "alerts": alerts,
    })
    .to_string()
}

fn group_key(l: &Labels) -> String {
    let inner: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A Slack incoming-webhook message: a title line as Alertmanager's default Slack template
/// writes it (`[FIRING:2] HighTemp`), then one line per alert (its summary or description,
/// else its labels).
pub fn slack(group_labels: &Labels, notices: &[Notice], channel: Option<&str>) -> String {
    let firing = notices.iter().filter(|n| n.firing).count();
    let status = if firing > 0 {
        format!("FIRING:{firing}")
    } else {
        "RESOLVED".to_string()
    };
    let name: Vec<&str> = group_labels.iter().map(|l| l.value.as_str()).collect();
    let mut text = format!("[{status}] {}", name.join(" "));
    for n in notices {
        let what = n
            .annotations
            .get("summary")
            .or_else(|| n.annotations.get("description"))
            .cloned()
            .unwrap_or_else(|| group_key(&n.labels));
        text.push_str(&format!(
            "\n• {} {what}",
            if n.firing { "🔥" } else { "✅" }
        ));
    }
    let mut v = json!({ "text": text });
    if let Some(c) = channel {
        v["channel"] = c.into();
    }
    v.to_string()
}

/// A PagerDuty Events API v2 event: trigger or resolve, deduplicated by the alert's
/// fingerprint, its severity from the alert's `severity` label.
pub fn pagerduty(routing_key: &str, n: &Notice, source: &str) -> String {
    let summary = n
        .annotations
        .get("summary")
        .cloned()
        .unwrap_or_else(|| group_key(&n.labels));
    let severity = match n.labels.get("severity").unwrap_or("") {
        "critical" | "page" | "fatal" => "critical",
        "warning" | "warn" | "ticket" => "warning",
        "info" | "informational" => "info",
        _ => "error",
    };
    let mut v = json!({
        "routing_key": routing_key,
        "event_action": if n.firing { "trigger" } else { "resolve" },
        "dedup_key": format!("{:016x}", n.fingerprint),
    });
    if n.firing {
        v["payload"] = json!({
            // PagerDuty keeps at most 1024 characters of a summary.
            "summary": summary.chars().take(1024).collect::<String>(),
            "source": source,
            "severity": severity,
            "timestamp": format_rfc3339_ms(n.starts_at),
            "custom_details": {
                "labels": labels_json(&n.labels),
                "annotations": n.annotations,
            },
        });
        v["client"] = "Strata".into();
        v["client_url"] = n.generator_url.clone().into();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(device: &str, firing: bool) -> Notice {
        let labels = Labels::from_pairs([
            ("alertname", "Hot"),
            ("device", device),
            ("severity", "page"),
        ])
        .unwrap();
        Notice {
            fingerprint: fingerprint(&labels),
            labels,
            annotations: BTreeMap::from([("summary".to_string(), format!("{device} hot"))]),
            firing,
            starts_at: 1_700_000_000_000,
            resolved_at: (!firing).then_some(1_700_000_060_000),
            generator_url: "http://strata/graph".into(),
        }
    }

    #[test]
    fn bodies_have_each_receivers_fields() {
        let am: Value = serde_json::from_str(&alertmanager(
            &[notice("d1", true), notice("d2", false)],
            1_700_000_240_000,
        ))
        .unwrap();
        assert_eq!(am[0]["endsAt"], "2023-11-14T22:17:20.000Z");
        assert_eq!(am[1]["endsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(am[0]["labels"]["device"], "d1");

        let group = Labels::from_pairs([("alertname", "Hot")]).unwrap();
        let wh: Value = serde_json::from_str(&webhook(
            "ops",
            &group,
            &[notice("d1", true), notice("d2", false)],
            "http://strata",
        ))
        .unwrap();
        assert_eq!(wh["version"], "4");
        assert_eq!(wh["status"], "firing");
        assert_eq!(wh["groupKey"], "{}:{alertname=\"Hot\"}");
        assert_eq!(
            wh["commonLabels"],
            json!({"alertname": "Hot", "severity": "page"})
        );
        assert_eq!(wh["commonAnnotations"], json!({}));
        assert_eq!(wh["alerts"][0]["endsAt"], ZERO_TIME);
        assert_eq!(wh["alerts"][1]["status"], "resolved");
        assert_eq!(wh["alerts"][0]["fingerprint"].as_str().unwrap().len(), 16);

        let sl: Value =
            serde_json::from_str(&slack(&group, &[notice("d1", true)], Some("#ops"))).unwrap();
        assert!(sl["text"].as_str().unwrap().starts_with("[FIRING:1] Hot\n"));
        assert_eq!(sl["channel"], "#ops");

        let pd: Value =
            serde_json::from_str(&pagerduty("key", &notice("d1", true), "strata")).unwrap();
        assert_eq!(pd["event_action"], "trigger");
        assert_eq!(pd["payload"]["severity"], "critical");
        let resolve: Value =
            serde_json::from_str(&pagerduty("key", &notice("d1", false), "strata")).unwrap();
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], pd["dedup_key"]);
        assert!(resolve.get("payload").is_none());
    }
}
