//! The rules manager: loads rule files, evaluates each group on its interval, writes what the
//! rules produce through an [`Appender`] (the server's durable write path), keeps alert state on
//! disk ([`crate::saved`]), and reloads files on request, keeping the state of rules that did
//! not change. As Prometheus' rules manager (`rules/manager.go`), it takes a query function and
//! an appendable and knows nothing of the server.
//!
//! - **Schedule.** A group is evaluated at multiples of its interval plus an offset derived
//!   from its file and name (so groups spread over the interval and keep their phase across
//!   restarts). An evaluation that overruns skips the ticks it covered, counted as missed.
//! - **Final windows.** With `final_windows`, a group's queries never look past the time
//!   before which every event-time window is final: a late event can then not make an alert
//!   resolve falsely (or fire) only to flip back once the window settles. When finality has not
//!   advanced since the last evaluation, the evaluation waits (counted), so `for` is measured in
//!   settled event time.
//! - **Reload.** Files are read and checked whole; when any fails, the groups running go on
//!   unchanged and the error is returned (as Prometheus keeps its old rules).

use crate::group::{External, GroupState, RuleHealth, Written};
use crate::notify::{Notifications, Offered};
use crate::query::Querier;
use crate::rules::{parse_rule_file, Rule};
use crate::saved;
use crate::state::{Alert, AlertState};
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_model::{Appender, Labels, Limits, Tenant, WriteBatch};

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Rule files: paths or globs (`rules/*.yml`), relative to the working directory.
    pub rule_files: Vec<String>,
    /// Interval of groups that set none, ms.
    pub evaluation_interval_ms: i64,
    /// Query offset of groups that set none, ms.
    pub query_offset_ms: i64,
    /// Whose data rules read and whose series they write.
    pub tenant: Tenant,
    /// `$externalLabels` and `$externalURL`.
    pub external: External,
    /// Where alert state is kept (created if missing).
    pub state_dir: PathBuf,
    /// Queries look only at final windows (see the module doc).
    pub final_windows: bool,
}

/// Why rule files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A glob pattern is malformed.
    #[error("rule_files pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read.
    #[error("rule file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's error.
        reason: String,
    },
    /// A file is not a valid rule file.
    #[error("rule file {path}: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, and where.
        errors: Vec<crate::RuleError>,
    },
    /// The directory for alert state cannot be created.
    #[error("the state directory {0}: {1}")]
    StateDir(String, String),
}

/// Counters of the manager, for `/metrics`.
#[derive(Debug, Default)]
pub struct ManagerStats {
    /// Group evaluations completed.
    pub evaluations: AtomicU64,
    /// Rule evaluations that failed (query, limit, or write).
    pub rule_failures: AtomicU64,
    /// Ticks skipped because an evaluation overran its interval.
    pub missed: AtomicU64,
    /// Evaluations that waited for windows to become final.
    pub waiting_final: AtomicU64,
    /// Samples written by rules.
    pub samples_written: AtomicU64,
    /// Failures to save alert state.
    pub state_save_failures: AtomicU64,
    /// Reloads that succeeded.
    pub reloads: AtomicU64,
    /// Reloads that failed (the previous rules kept running).
    pub reload_failures: AtomicU64,
    /// Whether the latest reload succeeded.
    pub last_reload_ok: AtomicBool,
    /// When the latest successful reload happened (ms).
    pub last_reload_success_ms: AtomicI64,
}

/// A group as the rules API shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The rule file it came from.
    pub file: String,
    /// Its name.
    pub name: String,
    /// Its interval, ms.
    pub interval_ms: i64,
    /// Its `limit` (0: none).
    pub limit: u64,
    /// When it was last evaluated (ms).
    pub last_eval: Option<i64>,
    /// How long that took.
    pub duration: Duration,
    /// Its rules, in order.
    pub rules: Vec<RuleView>,
}

/// A rule as the rules API shows it.
#[derive(Debug, Clone)]
pub struct RuleView {
    /// The rule.
    pub rule: Rule,
    /// Its latest evaluation.
    pub health: RuleHealth,
    /// An alerting rule's state.
    pub state: Option<AlertState>,
    /// An alerting rule's alerts (active and recently resolved).
    pub alerts: Vec<Alert>,
}

/// One loaded group and its evaluation task.
struct Slot {
    file: String,
    name: String,
    interval_ms: i64,
    state_path: PathBuf,
    run: Mutex<Run>,
    stop: AtomicBool,
    wake: tokio::sync::Notify,
}

struct Run {
    state: GroupState,
    /// The latest evaluation's time (ms) and duration.
    last_eval: Option<i64>,
    duration: Duration,
    /// The CRC of the state last saved: an unchanged state is not written again.
    saved_crc: Option<u32>,
}

/// Loads and runs rule groups (see the module doc).
pub struct RuleManager {
    opts: ManagerOptions,
    querier: Arc<dyn Querier>,
    appender: Arc<dyn Appender>,
    runtime: tokio::runtime::Handle,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// One reload at a time.
    reloading: Mutex<()>,
    stats: ManagerStats,
    notify: std::sync::OnceLock<Arc<Notifications>>,
    observer: std::sync::OnceLock<Arc<dyn crate::state::AlertObserver>>,
}

impl RuleManager {
    /// A manager with no groups yet: [`RuleManager::reload`] loads and starts them on
    /// `runtime`.
    pub fn new(
        opts: ManagerOptions,
        querier: Arc<dyn Querier>,
        appender: Arc<dyn Appender>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<RuleManager> {
        Arc::new(RuleManager {
            opts,
            querier,
            appender,
            runtime,
            slots: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
            stats: ManagerStats::default(),
            notify: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Sends alerts' state changes through `n` from now on (set once; a second call is
    /// ignored).
    pub fn notify_through(&self, n: Arc<Notifications>) {
        let _ = self.notify.set(n);
    }

    /// Tells `o` of alerts' state changes from now on (set once; a second call is ignored).
    pub fn observe_through(&self, o: Arc<dyn crate::state::AlertObserver>) {
        let _ = self.observer.set(o);
    }

    /// Where its alerts are sent, if anywhere.
    pub fn notifications(&self) -> Option<&Arc<Notifications>> {
        self.notify.get()
    }

    /// The tenant its rules read and write.
    pub fn tenant(&self) -> &Tenant {
        &self.opts.tenant
    }

    /// Its counters.
    pub fn stats(&self) -> &ManagerStats {
        &self.stats
    }

    /// Reads every rule file and replaces the running groups with theirs: a group of the same
    /// file and name keeps the alert state of its unchanged rules, a new one restores what was
    /// saved of it. On any error nothing changes. Returns the number of groups loaded.
    pub fn reload(self: &Arc<Self>) -> Result<usize, LoadError> {
        let _one = self.reloading.lock();
        let loaded = self.load_files();
        let groups = match loaded {
            Ok(g) => g,
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.last_reload_ok.store(false, Ordering::Relaxed);
                return Err(e);
            }
        };
        std::fs::create_dir_all(&self.opts.state_dir).map_err(|e| {
            LoadError::StateDir(self.opts.state_dir.display().to_string(), e.to_string())
        })?;
        let old: Vec<Arc<Slot>> = std::mem::take(&mut *self.slots.lock());
        // Stopped first, so none of them evaluates again once its state is taken over.
        for s in &old {
            s.stop.store(true, Ordering::Relaxed);
            s.wake.notify_one();
        }
        let mut slots = Vec::with_capacity(groups.len());
        for (file, group) in groups {
            let interval_ms = group
                .interval_ms
                .unwrap_or(self.opts.evaluation_interval_ms)
                .max(1);
            let name = group.name.clone();
            let mut state = GroupState::new(group);
            let state_path = saved::path_of(&self.opts.state_dir, &file, &name);
            let mut last_eval = None;
            match old.iter().find(|s| s.file == file && s.name == name) {
                Some(prev) => {
                    let prev = prev.run.lock();
                    state.adopt(&prev.state);
                    last_eval = prev.last_eval;
                }
                None => match saved::restore(&state_path, &mut state) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(file, group = name, alerts = n, "restored alert state"),
                    Err(e) => tracing::warn!(error = %e, "alert state not restored"),
                },
            }
            slots.push(Arc::new(Slot {
                file,
                name,
                interval_ms,
                state_path,
                run: Mutex::new(Run {
                    state,
                    last_eval,
                    duration: Duration::ZERO,
                    saved_crc: None,
                }),
                stop: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
            }));
        }
        for s in &slots {
            let (me, slot) = (self.clone(), s.clone());
            self.runtime.spawn(async move { me.schedule(slot).await });
        }
        let n = slots.len();
        *self.slots.lock() = slots;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        self.stats.last_reload_ok.store(true, Ordering::Relaxed);
        self.stats
            .last_reload_success_ms
            .store(strata_model::time::now_ms(), Ordering::Relaxed);
        tracing::info!(groups = n, "rule files loaded");
        Ok(n)
    }

    /// Stops every group's evaluations (their state stays saved).
    pub fn stop(&self) {
        for s in self.slots.lock().iter() {
            s.stop.store(true, Ordering::Relaxed);
            s.wake.notify_one();
        }
    }

    /// How many groups are loaded.
    pub fn group_count(&self) -> usize {
        self.slots.lock().len()
    }

    /// How many alerts are inactive (resolved lately), pending and firing.
    pub fn alert_counts(&self) -> [u64; 3] {
        let mut counts = [0u64; 3];
        let slots = self.slots.lock().clone();
        for s in &slots {
            let run = s.run.lock();
            for i in 0..run.state.group().rules.len() {
                for a in run
                    .state
                    .rule_state(i)
                    .into_iter()
                    .flat_map(|st| st.alerts())
                {
                    counts[match a.state {
                        AlertState::Inactive => 0,
                        AlertState::Pending => 1,
                        AlertState::Firing => 2,
                    }] += 1;
                }
            }
        }
        counts
    }

    /// The groups and their rules, in file order.
    pub fn groups(&self) -> Vec<GroupView> {
        let slots = self.slots.lock().clone();
        slots
            .iter()
            .map(|s| {
                let run = s.run.lock();
                let g = run.state.group();
                GroupView {
                    file: s.file.clone(),
                    name: s.name.clone(),
                    interval_ms: s.interval_ms,
                    limit: g.limit,
                    last_eval: run.last_eval,
                    duration: run.duration,
                    rules: g
                        .rules
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            let st = run.state.rule_state(i);
                            RuleView {
                                rule: r.clone(),
                                health: run.state.rule_health(i).cloned().unwrap_or_default(),
                                state: st.map(|s| s.state()),
                                alerts: st
                                    .map(|s| s.alerts().cloned().collect())
                                    .unwrap_or_default(),
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Every group of every file the patterns name, each file once, in pattern then name order.
    fn load_files(&self) -> Result<Vec<(String, crate::Group)>, LoadError> {
        let mut files: Vec<String> = Vec::new();
        for pattern in &self.opts.rule_files {
            let paths = glob::glob(pattern).map_err(|e| LoadError::Pattern {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
            let mut found: Vec<String> = paths
                .filter_map(|p| p.ok())
                .map(|p| p.display().to_string())
                .collect();
            found.sort();
            for f in found {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        let mut groups = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let parsed = parse_rule_file(&text).map_err(|errors| LoadError::Invalid {
                path: path.clone(),
                errors,
            })?;
            groups.extend(parsed.into_iter().map(|g| (path.clone(), g)));
        }
        Ok(groups)
    }

    /// Runs `slot`'s evaluations on its schedule until it is stopped.
    async fn schedule(self: Arc<Self>, slot: Arc<Slot>) {
        let interval = slot.interval_ms;
        let phase = phase_of(&slot.file, &slot.name, interval);
        let now = strata_model::time::now_ms();
        // The first tick after now.
        let mut next = (now - phase).div_euclid(interval) * interval + phase + interval;
        loop {
            let wait = (next - strata_model::time::now_ms()).max(0) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = slot.wake.notified() => {}
            }
            if slot.stop.load(Ordering::Relaxed) {
                return;
            }
            if strata_model::time::now_ms() < next {
                continue;
            }
            let ts = next;
            let (me, s) = (self.clone(), slot.clone());
            if tokio::task::spawn_blocking(move || me.eval_once(&s, ts))
                .await
                .is_err()
            {
                tracing::error!(
                    file = slot.file,
                    group = slot.name,
                    "rule evaluation panicked"
                );
            }
            let missed = (strata_model::time::now_ms() - ts) / interval - 1;
            if missed > 0 {
                self.stats
                    .missed
                    .fetch_add(missed as u64, Ordering::Relaxed);
                tracing::warn!(
                    file = slot.file,
                    group = slot.name,
                    missed,
                    "rule group evaluation overran its interval"
                );
            }
            next = ts + (missed.max(0) + 1) * interval;
        }
    }

    /// One evaluation of `slot` at `ts`: queries, writes, state saved.
    fn eval_once(&self, slot: &Slot, ts: i64) {
        let mut run = slot.run.lock();
        if slot.stop.load(Ordering::Relaxed) {
            return;
        }
        let tenant = &self.opts.tenant;
        let offset = run
            .state
            .group()
            .query_offset_ms
            .unwrap_or(self.opts.query_offset_ms);
        let mut ts = ts;
        if self.opts.final_windows {
            if let Some(f) = self.querier.final_before(tenant) {
                ts = ts.min(f.saturating_sub(1).saturating_add(offset));
            }
        }
        if run.last_eval.is_some_and(|l| ts <= l) {
            self.stats.waiting_final.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let started = std::time::Instant::now();
        let querier = &self.querier;
        let mut query = |expr: &str, t: i64| querier.instant(tenant, expr, t);
        let mut written = 0u64;
        let mut write = |w: &Written| -> Result<(), String> {
            if w.is_empty() {
                return Ok(());
            }
            let batch = batch_of(tenant, w)?;
            self.runtime
                .block_on(self.appender.append(batch))
                .map_err(|e| format!("writing the rule's output: {e}"))?;
            written += w.len() as u64;
            Ok(())
        };
        let ev = run.state.eval(
            ts,
            self.opts.query_offset_ms,
            &self.opts.external,
            &mut query,
            &mut write,
        );
        run.last_eval = Some(ts);
        run.duration = started.elapsed();
        self.stats.evaluations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .samples_written
            .fetch_add(written, Ordering::Relaxed);
        if !ev.errors.is_empty() {
            self.stats
                .rule_failures
                .fetch_add(ev.errors.len() as u64, Ordering::Relaxed);
            for (rule, error) in &ev.errors {
                tracing::warn!(
                    file = slot.file,
                    group = slot.name,
                    rule,
                    error,
                    "rule evaluation failed"
                );
            }
        }
        let alerting = run
            .state
            .group()
            .rules
            .iter()
            .any(|r| matches!(r, Rule::Alerting(_)));
        if !alerting {
            return;
        }
        let body = saved::encode(&slot.file, &slot.name, &run.state);
        let crc = crc32fast::hash(&body);
        if run.saved_crc != Some(crc) {
            match saved::write(&slot.state_path, &body) {
                Ok(()) => run.saved_crc = Some(crc),
                Err(e) => {
                    self.stats
                        .state_save_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "alert state not saved");
                }
            }
        }
        if let Some(o) = self.observer.get() {
            let group = run.state.group();
            let changed: Vec<&crate::state::Alert> = (0..group.rules.len())
                .filter_map(|i| run.state.rule_state(i))
                .flat_map(|st| st.alerts())
                .filter(|a| a.changed_at(ts))
                .collect();
            if !changed.is_empty() {
                o.changed(&self.opts.tenant, &changed);
            }
        }
        // After the state is saved: a restart restores what was offered, and the outbox knows
        // which of its changes it queued.
        if let Some(n) = self.notify.get() {
            let group = run.state.group();
            let offered: Vec<Offered<'_>> = group
                .rules
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((r, run.state.rule_state(i)?)))
                .flat_map(|(r, st)| {
                    let url = generator_url(&self.opts.external.url, r.expr());
                    st.alerts().map(move |alert| Offered {
                        alert,
                        generator_url: url.clone(),
                        channels: &[],
                    })
                })
                .collect();
            if let Err(e) = n.offer(&offered, strata_model::time::now_ms(), slot.interval_ms) {
                tracing::error!(error = e, "notifications not queued");
            }
        }
    }
}

/// Where a rule's expression can be looked at, as Prometheus links it.
fn generator_url(external: &str, expr: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("g0.expr", expr)
        .append_pair("g0.tab", "1")
        .finish();
    format!("{}/graph?{q}", external.trim_end_matches('/'))
}

/// A group's phase within its interval: stable for its file and name.
fn phase_of(file: &str, name: &str, interval: i64) -> i64 {
    (saved::group_hash(file, name) % interval as u64) as i64
}

/// What a rule wrote, as one batch of `tenant`.
fn batch_of(tenant: &Tenant, w: &Written) -> Result<WriteBatch, String> {
    let mut batch = WriteBatch::new(tenant.clone());
    let limits = Limits::default();
    for (labels, sample) in w {
        let mut pairs = pairs_of(labels);
        batch
            .push_series(&mut pairs, std::slice::from_ref(sample), None, &limits)
            .map_err(|e| format!("rule output {labels:?}: {e}"))?;
    }
    Ok(batch)
}

fn pairs_of(labels: &Labels) -> Vec<(&[u8], &[u8])> {
    labels
        .iter()
        .map(|l| (l.name.as_bytes(), l.value.as_bytes()))
        .collect()
}
