//! Device shadows and fleet status.
//!
//! `GET /api/v1/devices/{id}/shadow` and `PATCH` with `{"state":{"desired":{...}},"version":N}`:
//! an AWS IoT style shadow. `reported` is each metric's newest reading (from the shard's
//! shadows: every reading, by event time); `desired` is what users set, versioned (a PATCH
//! naming another version than the stored one gets 409); `delta` is the desired fields that
//! reported lacks or holds another value for. `version` counts accepted desired updates.
//!
//! `GET /api/v1/devices?site=&type=&status=online|offline&limit=&cursor=`: every device that has
//! reported or is registered, by id, with its last seen time (none for a registered device that
//! never reported: offline), status (offline once `devices.offline_after`
//! expected intervals have passed without a reading; the interval is the registry's
//! `expected_interval`, else `devices.expected_interval`) and current readings, and counts by
//! site and status over every device the site and type filters select. Answered from the
//! shadows in memory; site and type are the registry's, else the device's own labels.

use super::read::success;
use super::{tenant_of, ApiError, ApiRequest, AppState};
use crate::roster::Roster;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use strata_meta::MetaError;
use strata_model::time::now_ms;
use strata_model::{Tenant, METRIC_NAME};
use strata_stream::shadow::DeviceState;

/// Each metric's newest reading: name → (value, timestamp).
fn reported(d: &DeviceState) -> BTreeMap<String, (f64, i64)> {
    let mut out: BTreeMap<String, (f64, i64)> = BTreeMap::new();
    for (k, s) in &d.readings {
        let Some(name) = k.as_ref().get(METRIC_NAME.as_bytes()) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match out.get(&name) {
            Some((_, t)) if *t > s.timestamp => {}
            _ => {
                out.insert(name, (s.value, s.timestamp));
            }
        }
    }
    out
}

/// The device's state from its shard.
fn state(st: &AppState, tenant: &Tenant, id: &str) -> Option<DeviceState> {
    let mut out = None;
    st.engine.with_shadows(|sh| {
        if out.is_none() {
            out = sh.device(tenant, id).cloned();
        }
    });
    out
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
}

/// Whether desired `want` is what reported `have` is.
fn same(want: &Value, have: f64) -> bool {
    match want {
        Value::Number(n) => n.as_f64().is_some_and(|w| w == have),
        Value::Bool(b) => have == if *b { 1.0 } else { 0.0 },
        _ => false,
    }
}

/// The shadow document of device `id`; a 404 response when Strata knows nothing of it.
async fn shadow_doc(st: &AppState, tenant: &Tenant, id: &str) -> Result<Value, Response> {
    st.engine.synced_shadows().await;
    shadow_doc_synced(st, tenant, id).await
}

/// As [`shadow_doc`], the shadows already synced (a caller reading many devices syncs once).
pub(super) async fn shadow_doc_synced(
    st: &AppState,
    tenant: &Tenant,
    id: &str,
) -> Result<Value, Response> {
    let desired = st
        .registry
        .meta()
        .desired(tenant.as_str(), id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()).into_response())?;
    let reported = state(st, tenant, id)
        .map(|d| reported(&d))
        .unwrap_or_default();
    if reported.is_empty() && desired.version == 0 && st.registry.get(tenant.as_str(), id).is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no device {id:?}: it has not reported, is not registered and has no desired state"
            ),
        )
        .into_response());
    }
    let mut rep = Map::new();
    let mut rep_meta = Map::new();
    for (k, (v, t)) in &reported {
        rep.insert(k.clone(), number(*v));
        rep_meta.insert(k.clone(), json!({ "timestamp": t }));
    }
    let mut des = Map::new();
    let mut des_meta = Map::new();
    let mut delta = Map::new();
    for (k, f) in &desired.fields {
        des.insert(k.clone(), f.value.clone());
        des_meta.insert(k.clone(), json!({ "timestamp": f.timestamp }));
        if !reported.get(k).is_some_and(|(v, _)| same(&f.value, *v)) {
            delta.insert(k.clone(), f.value.clone());
        }
    }
    Ok(json!({
        "device": id,
        "state": { "reported": rep, "desired": des, "delta": delta },
        "metadata": { "reported": rep_meta, "desired": des_meta },
        "version": desired.version,
        "timestamp": now_ms(),
    }))
}

/// `GET /api/v1/devices/{id}/shadow`.
pub async fn get_shadow(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match shadow_doc(&st, &tenant, &id).await {
        Ok(doc) => success(doc),
        Err(r) => r,
    }
}

/// `PATCH /api/v1/devices/{id}/shadow` with `{"state":{"desired":{...}},"version":N}`.
pub async fn patch_shadow(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let (patch, version) = match parse_patch(&req.body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if id.is_empty() || id.len() > strata_meta::registry::MAX_ID_LEN {
        return ApiError::bad_data("device id must be 1 to 256 bytes").into_response();
    }
    match st
        .registry
        .meta()
        .update_desired(tenant.as_str(), &id, &patch, version, now_ms())
        .await
    {
        Ok(_) => match shadow_doc(&st, &tenant, &id).await {
            Ok(doc) => {
                publish_delta(&st, &tenant, &id, &doc);
                st.engine.live().publish(&tenant, [desired_of(&id, &doc)]);
                success(doc)
            }
            Err(r) => r,
        },
        Err(e @ MetaError::VersionConflict { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()).into_response()
        }
        Err(MetaError::Invalid(m)) => ApiError::bad_data(m).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The stream's desired-state entry of a shadow document.
pub(super) fn desired_of(id: &str, doc: &Value) -> strata_live::hub::Entry<crate::live::Update> {
    crate::live::desired_entry(
        id,
        &doc["state"]["desired"],
        &doc["state"]["delta"],
        doc["version"].as_u64().unwrap_or(0),
    )
}

/// Sends the device its delta through each source of its tenant that reaches devices (MQTT),
/// when there is one.
fn publish_delta(st: &AppState, tenant: &Tenant, id: &str, doc: &Value) {
    let delta = &doc["state"]["delta"];
    if delta.as_object().is_none_or(Map::is_empty) {
        return;
    }
    let payload = json!({
        "state": delta,
        "metadata": doc["metadata"]["desired"],
        "version": doc["version"],
        "timestamp": doc["timestamp"],
    })
    .to_string()
    .into_bytes();
    for p in st.publishers.iter().filter(|p| p.tenant() == tenant) {
        p.publish_delta(id, payload.clone());
    }
}

fn parse_patch(body: &[u8]) -> Result<(Map<String, Value>, Option<i64>), ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_data(format!("the body is not JSON: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(ApiError::bad_data(
            r#"the body must be {"state":{"desired":{...}},"version":N}"#,
        ));
    };
    if let Some(k) = o.keys().find(|k| *k != "state" && *k != "version") {
        return Err(ApiError::bad_data(format!(
            "unknown field {k:?}: the body is {{\"state\":{{\"desired\":{{...}}}},\"version\":N}}"
        )));
    }
    let version = match o.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::bad_data(format!("version must be a whole number >= 0, got {v}"))
        })?),
    };
    let state = o
        .get("state")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_data("state must be an object holding desired"))?;
    if state.contains_key("reported") {
        return Err(ApiError::bad_data(
            "state.reported is set by the device's telemetry, not through the API",
        ));
    }
    if let Some(k) = state.keys().find(|k| *k != "desired") {
        return Err(ApiError::bad_data(format!(
            "unknown field state.{k}: only state.desired is set"
        )));
    }
    let desired = state
        .get("desired")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_data("state.desired must be an object"))?;
    if desired.is_empty() {
        return Err(ApiError::bad_data("state.desired holds no fields"));
    }
    Ok((desired.clone(), version))
}

/// A fleet device's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Online,
    Offline,
}

impl Status {
    /// Its place in `[online, offline]` counts.
    fn slot(self) -> usize {
        usize::from(self == Status::Offline)
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
        }
    }
}

/// What one fleet status request selects and how it judges status.
struct FleetQuery {
    site: Option<String>,
    dtype: Option<String>,
    cursor: Option<String>,
    status: Option<Status>,
    limit: usize,
    now: i64,
    default_interval: i64,
    missed: i64,
}

/// Counts by site and status: registered sites by name index, others by name.
#[derive(Default)]
struct SiteCounts {
    registered: Vec<[u64; 2]>,
    other: ahash::AHashMap<String, [u64; 2]>,
}

impl SiteCounts {
    /// Counts a device of status `s` at the registered site `index` (see
    /// [`Roster::name`]), or at a site only its labels name (`name`; none counts as "").
    fn count(&mut self, index: u32, name: Option<&str>, s: Status) {
        let i = s.slot();
        if index != 0 {
            self.registered[index as usize][i] += 1;
            return;
        }
        let site = name.unwrap_or_default();
        match self.other.get_mut(site) {
            Some(c) => c[i] += 1,
            None => {
                let mut c = [0; 2];
                c[i] = 1;
                self.other.insert(site.to_string(), c);
            }
        }
    }
}

/// One shard's share of a fleet status answer.
struct FleetPart {
    counts: SiteCounts,
    total: [u64; 2],
    /// The first `limit + 1` selected after the cursor, by id (each id is in one shard, so the
    /// first `limit` of the shards' union are the page, and one more says there is a next).
    page: Vec<(String, Value)>,
    /// Which registered devices (by roster position) the shard has shadows of.
    seen: Vec<u64>,
}

impl FleetPart {
    /// Nothing counted yet, over the names of `roster`.
    fn new(roster: &Roster) -> FleetPart {
        FleetPart {
            counts: SiteCounts {
                registered: vec![[0; 2]; roster.names_len()],
                other: Default::default(),
            },
            total: [0; 2],
            page: Vec::new(),
            seen: Vec::new(),
        }
    }
}

impl FleetQuery {
    /// Whether a device of `site` and `dtype` is selected.
    fn selects(&self, site: Option<&str>, dtype: Option<&str>) -> bool {
        self.site.as_deref().is_none_or(|s| site == Some(s))
            && self.dtype.as_deref().is_none_or(|t| dtype == Some(t))
    }

    /// Whether a selected device with `id` and status `s` goes on the page that holds `taken`.
    fn pages(&self, id: &str, s: Status, taken: usize) -> bool {
        self.status.is_none_or(|w| w == s)
            && self.cursor.as_deref().is_none_or(|c| id > c)
            && taken <= self.limit
    }
}

fn fleet_part(
    sh: &strata_stream::shadow::Shadows,
    tenant: &Tenant,
    roster: &Roster,
    q: &FleetQuery,
) -> FleetPart {
    let mut part = FleetPart::new(roster);
    part.seen = vec![0; roster.len().div_ceil(64)];
    let mut at = 0;
    for (id, d) in sh.devices_after(tenant, None) {
        let entry = roster.seek(&mut at, id).map(|i| {
            part.seen[i / 64] |= 1 << (i % 64);
            roster.entry(i)
        });
        let label = |n: &str| {
            d.readings
                .iter()
                .find_map(|(k, _)| k.as_ref().get(n.as_bytes()))
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        let site_index = entry.map_or(0, |e| e.site);
        let dsite = roster.name(site_index).or_else(|| label("site"));
        let dt = entry
            .and_then(|e| roster.name(e.device_type))
            .or_else(|| label("type"));
        if !q.selects(dsite, dt) {
            continue;
        }
        let interval = entry
            .and_then(|e| e.interval_ms)
            .unwrap_or(q.default_interval);
        let last = d.last_seen();
        let s = if q.now.saturating_sub(last) > interval.saturating_mul(q.missed) {
            Status::Offline
        } else {
            Status::Online
        };
        part.counts.count(site_index, dsite, s);
        part.total[s.slot()] += 1;
        if !q.pages(id, s, part.page.len()) {
            continue;
        }
        let readings: Map<String, Value> = reported(d)
            .into_iter()
            .map(|(k, (v, _))| (k, number(v)))
            .collect();
        part.page.push((
            id.to_string(),
            json!({
                "id": id, "site": dsite, "type": dt, "status": s.as_str(),
                "last_seen": last, "readings": readings,
            }),
        ));
    }
    part
}

/// The registered devices no shard has a shadow of, which have never reported: offline.
fn never_reported(roster: &Roster, parts: &[FleetPart], q: &FleetQuery) -> FleetPart {
    let mut part = FleetPart::new(roster);
    for i in 0..roster.len() {
        if parts.iter().any(|p| p.seen[i / 64] & (1 << (i % 64)) != 0) {
            continue;
        }
        let e = roster.entry(i);
        let (site, dt) = (roster.name(e.site), roster.name(e.device_type));
        if !q.selects(site, dt) {
            continue;
        }
        part.counts.count(e.site, site, Status::Offline);
        part.total[Status::Offline.slot()] += 1;
        let id = roster.id(i);
        if q.pages(id, Status::Offline, part.page.len()) {
            part.page.push((
                id.to_string(),
                json!({
                    "id": id, "site": site, "type": dt, "status": Status::Offline.as_str(),
                    "last_seen": null, "readings": {},
                }),
            ));
        }
    }
    part
}

/// `GET /api/v1/devices`: fleet status (see the module doc).
pub async fn fleet(State(st): State<AppState>, req: ApiRequest) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let p = req.params();
    let status = match p.get("status") {
        None | Some("") => None,
        Some("online") => Some(Status::Online),
        Some("offline") => Some(Status::Offline),
        Some(v) => {
            return ApiError::bad_data(format!("status={v:?}: expected online or offline"))
                .into_response()
        }
    };
    let limit = match p.page_limit() {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let q = FleetQuery {
        site: p.text("site"),
        dtype: p.text("type"),
        cursor: p.text("cursor"),
        status,
        limit,
        now: now_ms(),
        default_interval: st.fleet.expected_interval_ms,
        missed: st.fleet.offline_after,
    };
    let roster = st.registry.roster(tenant.as_str());
    let parts = {
        let (st, roster) = (st.clone(), roster.clone());
        let run = move || {
            st.engine.sync_shadows();
            let mut parts = st
                .engine
                .map_shadows(|sh| fleet_part(sh, &tenant, &roster, &q));
            let silent = never_reported(&roster, &parts, &q);
            parts.push(silent);
            parts
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(p) => p,
            Err(e) => return ApiError::internal(format!("fleet status: {e}")).into_response(),
        }
    };
    let mut counts: BTreeMap<String, [u64; 2]> = BTreeMap::new();
    let mut total = [0u64; 2];
    let mut page: Vec<(String, Value)> = Vec::new();
    for part in parts {
        let registered = part.counts.registered.iter().enumerate();
        let named = registered
            .filter(|(_, c)| **c != [0, 0])
            .filter_map(|(i, c)| Some((roster.name(i as u32)?.to_string(), *c)));
        for (site, c) in named.chain(part.counts.other) {
            let have = counts.entry(site).or_default();
            have[0] += c[0];
            have[1] += c[1];
        }
        total[0] += part.total[0];
        total[1] += part.total[1];
        page.extend(part.page);
    }
    page.sort_by(|a, b| a.0.cmp(&b.0));
    let next = (page.len() > limit).then(|| page[limit - 1].0.clone());
    page.truncate(limit);
    let by_site: Map<String, Value> = counts
        .into_iter()
        .map(|(s, [on, off])| (s, json!({"online": on, "offline": off})))
        .collect();
    success(json!({
        "devices": page.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "next_cursor": next,
        "counts": {
            "online": total[0], "offline": total[1], "total": total[0] + total[1],
            "by_site": by_site,
        },
    }))
}
