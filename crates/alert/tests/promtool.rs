//! `promtool check rules` (Debian's Prometheus 2.42) as the oracle: for well-formed files and
//! for files with one problem each, Strata accepts exactly what promtool accepts. Skips, saying
//! so, where promtool is not installed (`apt-get install prometheus`).

use std::process::Command;
use strata_alert::parse_rule_file;

/// A file of one group, its rules' YAML indented under `rules:`.
fn file(rules: &str) -> String {
    format!("groups:\n  - name: g\n    rules:\n{rules}")
}

#[test]
fn strata_accepts_what_promtool_accepts() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let alert = |extra: &str| file(&format!("      - alert: A\n        expr: up == 0\n{extra}"));
    let cases: Vec<(&str, String)> = vec![
        (
            "good",
            "groups:\n  - name: a\n    interval: 30s\n    limit: 5\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n        labels:\n          src: r\n      - alert: Down\n        expr: up == 0\n        for: 5m\n        keep_firing_for: 1m\n        labels:\n          severity: page\n        annotations:\n          summary: '{{ $labels.instance }} down, {{ $value | humanize }}'\n          more: '{{ if gt $value 1.0 }}big{{ else }}small{{ end }}'\n  - name: b\n    rules: []\n".into(),
        ),
        ("bad expression", file("      - record: r\n        expr: sum(up\n")),
        ("bad record name", file("      - record: 'not a name'\n        expr: up\n")),
        ("for on a recording rule", file("      - record: r\n        expr: up\n        for: 5m\n")),
        ("annotations on a recording rule", file("      - record: r\n        expr: up\n        annotations:\n          a: b\n")),
        ("record and alert", file("      - record: r\n        alert: A\n        expr: up\n")),
        ("neither", file("      - expr: up\n")),
        ("no expr", file("      - alert: A\n")),
        ("metric name label", alert("        labels:\n          __name__: x\n")),
        ("bad label name", alert("        labels:\n          'a-b': x\n")),
        ("bad annotation name", alert("        annotations:\n          'a-b': x\n")),
        ("unclosed action", alert("        annotations:\n          s: '{{ $labels.x '\n")),
        ("unknown function", alert("        annotations:\n          s: '{{ humanise $value }}'\n")),
        ("if without end", alert("        annotations:\n          s: '{{ if $value }}x'\n")),
        ("bad duration", alert("        for: soon\n")),
        ("unknown field", alert("        fro: 5m\n")),
        (
            "repeated group",
            "groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n".into(),
        ),
        ("nameless group", "groups:\n  - rules: []\n".into()),
        ("not yaml", "groups: [\n".into()),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &cases {
        let path = dir.path().join("rules.yml");
        std::fs::write(&path, text).unwrap();
        let promtool = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&path)
            .output()
            .unwrap();
        let ours = parse_rule_file(text);
        assert_eq!(
            ours.is_ok(),
            promtool.status.success(),
            "{name}: strata {ours:?}, promtool: {}{}",
            String::from_utf8_lossy(&promtool.stdout),
            String::from_utf8_lossy(&promtool.stderr)
        );
        assert_eq!(ours.is_ok(), *name == "good", "{name}: {ours:?}");
    }
}
