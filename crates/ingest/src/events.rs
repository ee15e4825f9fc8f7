//! JSON device events: one object, an array of objects, or NDJSON (one object per line).
//!
//! ```json
//! {"event_id": "e-17", "device_id": "dev-7", "timestamp": "2026-11-23T10:00:00Z",
//!  "readings": {"temperature": 23.4, "door_open": true}, "labels": {"site": "s1"}}
//! ```
//! Each reading becomes a sample of series `<reading>{device="<device_id>", <labels>}`;
//! booleans are stored as 1/0 and `null` readings are skipped. `timestamp` is RFC 3339 or epoch
//! milliseconds (default: now). With an `event_id`, every sample of the event carries it so
//! redeliveries can be recognised. The flat form `{"metric": "m", "labels": {...},
//! "timestamp": ms, "value": x}` is accepted too.

use crate::cache::SeriesCache;
use crate::{DecodeContext, Decoded, IngestError, Location, RejectReason};
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use strata_model::{Sample, WriteBatch};

thread_local! {
    /// Series seen before on this thread, by their device, labels and reading name as sent
    /// (see [`SeriesCache`]).
    static SEEN: RefCell<SeriesCache> = RefCell::new(SeriesCache::default());
}

/// What decoding one body writes to, with the thread's series memory.
struct Out<'o> {
    batch: &'o mut WriteBatch,
    d: &'o mut Decoded,
    cache: &'o mut SeriesCache,
    /// Scratch for a series' raw form (its cache key): the event's device and labels, then
    /// the reading's name.
    raw: Vec<u8>,
    /// Bytes of `raw` the event's readings share.
    prefix: usize,
}

impl Out<'_> {
    /// Starts the raw form of an event's series with its device and labels, each part
    /// length-prefixed so distinct inputs never meet (each reading adds its name).
    fn start_event(&mut self, device: Option<&str>, labels: &[(Cow<'_, str>, Cow<'_, str>)]) {
        self.raw.clear();
        raw_part(&mut self.raw, device.map_or(b"\xff", str::as_bytes));
        for (k, v) in labels {
            raw_part(&mut self.raw, k.as_bytes());
            raw_part(&mut self.raw, v.as_bytes());
        }
        self.prefix = self.raw.len();
    }
}

fn raw_part(raw: &mut Vec<u8>, b: &[u8]) {
    raw.extend_from_slice(&(b.len() as u32).to_le_bytes());
    raw.extend_from_slice(b);
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    readings: Option<BTreeMap<Cow<'a, str>, &'a RawValue>>,
    #[serde(borrow, default)]
    labels: Option<BTreeMap<Cow<'a, str>, &'a RawValue>>,
    #[serde(borrow, default)]
    metric: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
}

/// Decodes an events body into `out`.
pub fn decode(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    decode_for(body, ctx, None, out)
}

/// Decodes an events body into `out`, taking `device` as the device of events that name none
/// (the device an MQTT topic names, say).
pub fn decode_for(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    device: Option<&str>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    let mut d = Decoded::default();
    SEEN.with_borrow_mut(|cache| {
        let mut o = Out {
            batch: out,
            d: &mut d,
            cache,
            raw: Vec::new(),
            prefix: 0,
        };
        decode_into(body, ctx, device, &mut o)
    })?;
    Ok(d)
}

fn decode_into(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    device: Option<&str>,
    o: &mut Out<'_>,
) -> Result<(), IngestError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err(IngestError::Empty("body holds no events".into())),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(json_err)?;
            for (i, item) in items.iter().enumerate() {
                one(item.get().as_bytes(), Location::Index(i), ctx, device, o);
            }
        }
        Some(_) => {
            // One object, possibly spread over several lines, or NDJSON.
            if let Ok(single) = serde_json::from_slice::<&RawValue>(body) {
                one(single.get().as_bytes(), Location::Line(1), ctx, device, o);
            } else {
                for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    one(line, Location::Line(i + 1), ctx, device, o);
                }
            }
        }
    }
    Ok(())
}

fn json_err(e: serde_json::Error) -> IngestError {
    IngestError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    }
}

fn one(
    text: &[u8],
    loc: Location,
    ctx: &DecodeContext<'_>,
    default_device: Option<&str>,
    o: &mut Out<'_>,
) {
    let ev: Event<'_> = match serde_json::from_slice(text) {
        Ok(ev) => ev,
        Err(e) => {
            let why = if e.is_syntax() || e.is_eof() {
                "malformed JSON"
            } else {
                "unexpected shape"
            };
            o.d.reject(loc, RejectReason::Syntax(format!("{why}: {e}")), 1);
            return;
        }
    };
    let readings_count = ev.readings.as_ref().map_or(1, |r| r.len());
    let ts = match ev.timestamp.map(timestamp) {
        None => ctx.now_ms,
        Some(Ok(t)) => t,
        Some(Err(e)) => return o.d.reject(loc, RejectReason::Invalid(e), readings_count),
    };
    if let Err(e) = ctx.limits.check_timestamp(ts, ctx.now_ms) {
        return o.d.reject(loc, RejectReason::Timestamp(e), readings_count);
    }
    let mut labels: SmallVec<[(Cow<'_, str>, Cow<'_, str>); 12]> = SmallVec::new();
    for (k, v) in ev.labels.iter().flatten() {
        match serde_json::from_str::<Cow<'_, str>>(v.get()) {
            Ok(s) => labels.push((k.clone(), s)),
            Err(_) => {
                return o.d.reject(
                    loc,
                    RejectReason::Invalid(format!("labels.{k} must be a string")),
                    readings_count,
                )
            }
        }
    }
    if let Some(metric) = ev.metric {
        // The flat form: one sample.
        let Some(v) = ev.value else {
            return o.d.reject(
                loc,
                RejectReason::Invalid("a \"metric\" event needs a \"value\"".into()),
                1,
            );
        };
        o.start_event(None, &labels);
        match reading_value(v) {
            Ok(Some(v)) => push(o, || loc.clone(), &metric, None, &labels, ts, v, None, ctx),
            Ok(None) => {}
            Err(r) => o.d.reject(loc, r, 1),
        }
        return;
    }
    let device = match (ev.device_id, default_device) {
        (Some(dev), _) if !dev.is_empty() => dev,
        (_, Some(dev)) if !dev.is_empty() => Cow::Borrowed(dev),
        _ => {
            return o.d.reject(
                loc,
                RejectReason::Invalid("device_id is missing or empty".into()),
                readings_count,
            )
        }
    };
    let Some(readings) = ev.readings else {
        return o.d.reject(
            loc,
            RejectReason::Invalid(
                "readings is missing (expected an object of name: number)".into(),
            ),
            1,
        );
    };
    let event = ev
        .event_id
        .as_deref()
        .map(|id| o.batch.event_key(id.as_bytes()));
    o.start_event(Some(&device), &labels);
    for (name, raw) in &readings {
        let rloc = || Location::Reading {
            event: Box::new(loc.clone()),
            reading: name.to_string(),
        };
        match reading_value(raw) {
            Ok(Some(v)) => push(o, rloc, name, Some(&device), &labels, ts, v, event, ctx),
            Ok(None) => {}
            Err(r) => o.d.reject(rloc(), r, 1),
        }
    }
}

/// Appends one sample of series `metric{device, labels}` (of the event
/// [`Out::start_event`] started); `loc` names it if it is refused.
#[allow(clippy::too_many_arguments)]
fn push(
    o: &mut Out<'_>,
    loc: impl FnOnce() -> Location,
    metric: &str,
    device: Option<&str>,
    labels: &[(Cow<'_, str>, Cow<'_, str>)],
    ts: i64,
    v: f64,
    event: Option<strata_model::EventKey>,
    ctx: &DecodeContext<'_>,
) {
    let sample = [Sample::new(ts, v)];
    o.raw.truncate(o.prefix);
    raw_part(&mut o.raw, metric.as_bytes());
    let hash = SeriesCache::hash(&o.raw, o.batch);
    if let Some((key, id, entity)) = o.cache.get(ctx.limits, hash, &o.raw) {
        o.batch.push_known_in_event(key, id, entity, &sample, event);
        o.d.accepted_samples += 1;
        return;
    }
    let mut l: SmallVec<[(&[u8], &[u8]); 16]> = SmallVec::new();
    l.push((b"__name__", metric.as_bytes()));
    if let Some(dev) = device {
        l.push((b"device", dev.as_bytes()));
    }
    for (k, v) in labels {
        // device_id wins over a `device` label.
        if device.is_some() && k == "device" {
            continue;
        }
        l.push((k.as_bytes(), v.as_bytes()));
    }
    match o.batch.push_series(&mut l, &sample, event, ctx.limits) {
        Ok(()) => {
            o.d.accepted_samples += 1;
            let s = o.batch.get(o.batch.series_len() - 1).expect("just pushed");
            o.cache.insert(hash, &o.raw, &s);
        }
        Err(e) => o.d.reject(loc(), RejectReason::Label(e), 1),
    }
}

/// A reading's number: booleans are 1/0, `null` is no reading.
fn reading_value(raw: &RawValue) -> Result<Option<f64>, RejectReason> {
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b't') => Ok(Some(1.0)),
        Some(b'f') => Ok(Some(0.0)),
        Some(b'"') => Err(RejectReason::StringField),
        Some(b'{') | Some(b'[') => Err(RejectReason::Invalid(
            "value is an object or array; expected a number or boolean".into(),
        )),
        _ => match raw.get().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            Ok(_) => Err(RejectReason::NotANumber),
            Err(_) => Err(RejectReason::Invalid(format!(
                "invalid number {}",
                raw.get()
            ))),
        },
    }
}

/// Epoch milliseconds (integer or fraction) or an RFC 3339 string.
fn timestamp(raw: &RawValue) -> Result<i64, String> {
    let s = raw.get();
    if let Some(stripped) = s.strip_prefix('"') {
        let inner: String =
            serde_json::from_str(s).map_err(|_| format!("invalid timestamp {s}"))?;
        let _ = stripped;
        return strata_model::time::parse_rfc3339_ms(&inner)
            .ok_or_else(|| format!("timestamp {inner:?} is not RFC 3339 (e.g. 2026-11-23T10:00:00Z) nor epoch milliseconds"));
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v.abs() < 9e15 => Ok(v.round() as i64),
        _ => Err(format!(
            "timestamp {s} is not RFC 3339 nor epoch milliseconds in range"
        )),
    }
}
