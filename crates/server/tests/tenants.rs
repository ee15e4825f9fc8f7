//! Tenants cannot touch the engine's namespace or each other's persistence: every tenant id the
//! validator accepts, the names of the engine's own files included, is written and flushed
//! beside the others, survives a restart, and reads back alone; a data directory in the old
//! layout (tenant directories beside the engine's files) still opens.

mod common;
use common::*;
use std::path::Path;
use strata_model::Tenant;

/// Ids that name something of the engine's, start with a dot, look like `..`, differ only in
/// case, use every allowed symbol or take the longest length.
fn special_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        // The storage engine's files (raw and warm tiers) and the directories above them.
        "checkpoint",
        "checkpoint.tmp",
        "tenants",
        "log",
        "shards",
        "tsdb",
        "rollups",
        "warm",
        "blocks",
        "groups.ckpt",
        "events.ckpt",
        "windows.ckpt",
        "corrected.ckpt",
        "strata.toml",
        "p0000",
        "0000",
        "0000000000000001_0_1.blk",
        "0000000000000001_0_1.tmp",
        // Dot names.
        ".tmp",
        ".a",
        "...",
        "..a",
        "a..",
        ".-",
        // Case pairs: one directory each even where the filesystem ignores case.
        "acme",
        "Acme",
        "ACME",
        "aCmE",
        "CHECKPOINT",
        // Symbols, and the default tenant next to look-alikes.
        "!*'()-_.",
        "-",
        "_",
        "default",
        "Default",
    ]
    .map(String::from)
    .to_vec();
    ids.push("x".repeat(150));
    ids.push("X".repeat(150));
    ids.push(format!("{}.", "Ab".repeat(74) + "c"));
    ids
}

/// Ids the validator refuses: they never reach storage.
const REFUSED: &[&str] = &[".", "..", "@tenants", "a/b", "a b", ""];

fn write(s: &Server, tenant: &str, lines: &str) -> u16 {
    s.client
        .post(s.url("/write?precision=ms"))
        .header("X-Scope-OrgID", tenant)
        .body(lines.to_string())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Tenant `i` writes `probe{i="<i>",part="<part>"}` with `n` samples whose values name it.
fn probe_lines(i: usize, part: &str, base: i64, n: i64) -> String {
    (0..n)
        .map(|k| {
            let t = base + k * 1000;
            format!(
                "probe,i={i},part={part} value={} {t}\n",
                i as i64 * 1_000_000 + k
            )
        })
        .collect()
}

/// What tenant `i` should read back: one series per part, every sample of its own.
fn check_tenant(s: &Server, ids: &[String], i: usize, parts: &[(&str, i64)], base: i64) {
    let got = s.export_as("probe", Some(&ids[i]));
    assert_eq!(
        got.len(),
        parts.len(),
        "tenant {:?}: series {got:?}",
        ids[i]
    );
    for (labels, samples) in &got {
        assert_eq!(
            labels["i"].as_str(),
            Some(i.to_string().as_str()),
            "tenant {:?} reads another tenant's series {labels}",
            ids[i]
        );
        let part = labels["part"].as_str().unwrap();
        let n = parts.iter().find(|p| p.0 == part).unwrap().1;
        let want: Vec<(i64, f64)> = (0..n)
            .map(|k| (base + k * 1000, (i as i64 * 1_000_000 + k) as f64))
            .collect();
        assert_eq!(samples, &want, "tenant {:?} part {part}", ids[i]);
    }
}

/// Every entry of `dir` is one of `allowed`: tenants added nothing beside the engine's files.
fn only(dir: &Path, allowed: &[&str]) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            allowed.contains(&name.as_str()),
            "{} holds {name:?}",
            dir.display()
        );
    }
}

#[test]
fn every_valid_tenant_id_is_flushed_and_restored_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ids = special_ids();
    for id in &ids {
        assert!(
            Tenant::new(id).is_ok(),
            "{id:?} should be a valid tenant id"
        );
    }
    let base = now_ms() - 3_600_000;
    let cfg = "partitions = 2\n";
    let s = Server::start(dir.path(), cfg);
    for bad in REFUSED {
        assert_eq!(write(&s, bad, "probe value=1\n"), 400, "tenant {bad:?}");
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            write(&s, id, &probe_lines(i, "flushed", base, 20)),
            204,
            "{id:?}"
        );
    }
    // Every flush succeeds, for everyone, again and again.
    s.flush();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            write(&s, id, &probe_lines(i, "logged", base, 7)),
            204,
            "{id:?}"
        );
    }
    s.flush();
    let m = s.metrics();
    assert_eq!(metric(&m, "strata_tsdb_tenant_errors_total"), 0.0);
    // After the flush only the last segment is left: the checkpoint advanced.
    assert_eq!(metric(&m, "strata_log_segments"), 2.0, "one per partition");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            write(&s, id, &probe_lines(i, "unflushed", base, 3)),
            204,
            "{id:?}"
        );
    }
    // SIGKILL: the last part comes back from the log, the rest from blocks.
    s.kill9();

    let data = dir.path().join("data");
    for p in ["0000", "0001"] {
        let shard = data.join("shards").join(p);
        only(&shard.join("tsdb"), &["checkpoint", "@tenants"]);
        only(
            &shard.join("rollups"),
            &["warm", "1h", "windows.ckpt", "corrected.ckpt"],
        );
        only(&shard.join("rollups/warm"), &["checkpoint", "@tenants"]);
        only(
            &shard.join("rollups/1h"),
            &["store", "hours.ckpt", "final-hours.ckpt", "1d"],
        );
        only(&shard.join("rollups/1h/store"), &["checkpoint", "@tenants"]);
        only(&shard.join("rollups/1h/1d"), &["store", "hours.ckpt"]);
        only(
            &shard.join("rollups/1h/1d/store"),
            &["checkpoint", "@tenants"],
        );
    }
    let s = Server::start(dir.path(), cfg);
    let parts = [("flushed", 20), ("logged", 7), ("unflushed", 3)];
    for i in 0..ids.len() {
        check_tenant(&s, &ids, i, &parts, base);
    }
    s.flush();
    assert_eq!(metric(&s.metrics(), "strata_tsdb_tenant_errors_total"), 0.0);
}

/// The layout before tenant namespaces: `tsdb/<tenant id>/<blocks>` beside `tsdb/checkpoint`,
/// made here from a fresh data directory by moving each tenant's directory back. Among them a
/// tenant named `checkpoint`, whose directory took the checkpoint's place (the old code could
/// never write its checkpoint then). The server opens it, moves everything into place and
/// answers as before.
#[test]
fn a_data_directory_in_the_old_layout_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = ["default", "acme", "Mixed.Case", "checkpoint", "groups.ckpt"]
        .map(String::from)
        .to_vec();
    let base = now_ms() - 3_600_000;
    let cfg = "partitions = 1\n";
    {
        let s = Server::start(dir.path(), cfg);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(write(&s, id, &probe_lines(i, "old", base, 10)), 204);
        }
        // Event time moves on, so the windows of an hour ago are final and reach the warm
        // tier's blocks at the last flush.
        let clock = format!("clock value=1 {}\n", now_ms());
        assert_eq!(write(&s, "default", &clock), 204);
        s.stop();
    }
    let shard = dir.path().join("data/shards/0000");
    for store in [shard.join("tsdb"), shard.join("rollups/warm")] {
        let root = store.join("@tenants");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), ids.len());
        for e in std::fs::read_dir(&root).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let tenant = strata_tsdb::layout::tenant_of(&name).unwrap();
            if tenant.as_str() == "checkpoint" {
                std::fs::remove_file(store.join("checkpoint")).unwrap();
            }
            std::fs::rename(e.path(), store.join(tenant.as_str())).unwrap();
        }
        std::fs::remove_dir(&root).unwrap();
    }
    assert!(
        shard.join("tsdb/checkpoint").is_dir(),
        "the old layout's failure case"
    );
    let s = Server::start(dir.path(), cfg);
    for i in 0..ids.len() {
        check_tenant(&s, &ids, i, &[("old", 10)], base);
    }
    for store in [shard.join("tsdb"), shard.join("rollups/warm")] {
        only(&store, &["checkpoint", "@tenants"]);
        assert!(store.join("checkpoint").is_file() || !store.join("checkpoint").exists());
    }
    // Flushing works again for everyone, and the next start finds the new layout.
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(write(&s, id, &probe_lines(i, "new", base, 5)), 204);
    }
    s.flush();
    assert!(shard.join("tsdb/checkpoint").is_file());
    s.stop();
    let s = Server::start(dir.path(), cfg);
    for i in 0..ids.len() {
        check_tenant(&s, &ids, i, &[("old", 10), ("new", 5)], base);
    }
}

/// One tenant whose directory cannot be created (a file stands in its place) fails its own
/// flush only: the flush reports it, the other tenant's samples reach blocks, the failure is
/// counted, and once the obstacle is gone everything, the failing tenant's samples included,
/// is flushed and survives a restart.
#[test]
fn a_tenant_that_cannot_be_flushed_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = ["victim", "bystander"].map(String::from).to_vec();
    let base = now_ms() - 3_600_000;
    let cfg = "partitions = 1\n[rollups]\nenabled = false\n";
    let s = Server::start(dir.path(), cfg);
    let store = dir.path().join("data/shards/0000/tsdb");
    let obstacle = store.join("@tenants/victim");
    std::fs::write(&obstacle, b"in the way").unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(write(&s, id, &probe_lines(i, "p", base, 10)), 204);
    }
    let r = s.client.post(s.url("/api/v1/admin/flush")).send().unwrap();
    let (status, body) = (r.status().as_u16(), r.text().unwrap());
    assert!(status >= 500 && body.contains("victim"), "{status} {body}");
    let m = s.metrics();
    assert_eq!(metric(&m, "strata_tsdb_tenant_errors_total"), 1.0);
    assert!(
        metric(&m, "strata_tsdb_blocks") >= 1.0,
        "the bystander was flushed"
    );
    assert!(
        !store.join("checkpoint").exists(),
        "the checkpoint waits for the victim"
    );
    for i in 0..ids.len() {
        check_tenant(&s, &ids, i, &[("p", 10)], base);
    }
    std::fs::remove_file(&obstacle).unwrap();
    s.flush();
    assert!(store.join("checkpoint").is_file());
    s.kill9();
    let s = Server::start(dir.path(), cfg);
    for i in 0..ids.len() {
        check_tenant(&s, &ids, i, &[("p", 10)], base);
    }
}
