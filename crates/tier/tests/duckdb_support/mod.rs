//! Running DuckDB (a reader with no Strata code) from tests: the `duckdb` CLI or Python's
//! `duckdb` package (`pip install duckdb`, see `.ci/run`). Shared by the cold tier's tests and
//! the server's (`#[path]`-included there).
#![allow(dead_code)]

use std::process::Command;

/// How DuckDB is run here.
pub enum Duck {
    Cli,
    Python,
}

/// The DuckDB at hand; `None` (with a printed notice naming `test`) when neither is installed.
pub fn find_duckdb(test: &str) -> Option<Duck> {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if ok(Command::new("duckdb").arg("-version")) {
        Some(Duck::Cli)
    } else if ok(Command::new("python3").args(["-c", "import duckdb"])) {
        Some(Duck::Python)
    } else {
        println!("SKIPPED {test}: no duckdb CLI or Python duckdb (pip install duckdb)");
        None
    }
}

/// Runs one query; rows of comma-separated values.
pub fn query(duck: &Duck, sql: &str) -> Vec<Vec<String>> {
    let out = match duck {
        Duck::Cli => Command::new("duckdb")
            .args(["-csv", "-noheader", "-c", sql])
            .output(),
        Duck::Python => Command::new("python3")
            .args([
                "-c",
                "import duckdb, sys\n\
                 for row in duckdb.sql(sys.argv[1]).fetchall():\n    \
                 print(','.join('' if v is None else repr(v) if isinstance(v, float) else str(v) for v in row))",
                sql,
            ])
            .output(),
    }
    .unwrap();
    assert!(
        out.status.success(),
        "duckdb failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Equal to 1e-9 relative (DuckDB sums in another order).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}
