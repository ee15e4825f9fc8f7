//! Runs Prometheus's own PromQL test scripts (`../shared/promql-tests/*.test`, read in place,
//! never copied) against the engine and fails if any case fails. Skipped cases (native
//! histograms) are listed with their reasons. `cargo test -p strata-promql --test conformance
//! -- --nocapture` prints every file's report.

use std::path::PathBuf;
use strata_promql::script::run_file;

/// `STRATA_PROMQL_TESTS` if set, else `../shared/promql-tests` beside the repository.
fn test_dir() -> PathBuf {
    match std::env::var_os("STRATA_PROMQL_TESTS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promql-tests"),
    }
}

#[test]
fn prometheus_promql_test_scripts() {
    let dir = test_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for path in &files {
        let report =
            run_file(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        println!("{report}");
        passed += report.passed;
        failed += report.failed.len();
        skipped += report.skipped.len();
    }
    println!(
        "total: {} files, {} cases: {passed} passed, {failed} failed, {skipped} skipped",
        files.len(),
        passed + failed + skipped
    );
    assert_eq!(
        failed, 0,
        "{failed} PromQL conformance cases failed (see the reports above)"
    );
}
