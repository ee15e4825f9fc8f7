//! Scores the detector's defaults on NAB files, offline (seconds per try, where the end-to-end
//! `../shared/anomaly/nab_eval.py` takes minutes):
//!
//!   cargo run --release -p strata-anomaly --example nab -- DATA_DIR OUT_DIR
//!   python3 ../shared/anomaly/nab_score.py --data DATA_DIR --labels LABELS --results OUT_DIR
//!
//! Each file is fed row by row, as nab_eval.py feeds Strata one window per row, and each score
//! s is written as s / (1 + s), as nab_eval.py maps it. Rows are numbered as nab_eval.py
//! stamps them (every file ends at the same minute, `NAB_END`).

use std::io::Write;
use strata_anomaly::{Detector, Options, Period};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, out) = (&args[1], &args[2]);
    // The window index of every file's last row: nab_eval.py ends every file at the same
    // minute, ten minutes before its run; NAB_END (minutes since the epoch) sets it.
    let end: i64 = std::env::var("NAB_END")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(29_000_000);
    for cat in std::fs::read_dir(data).expect("data dir") {
        let cat = cat.unwrap().path();
        if !cat.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&cat).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "csv") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let rel = f.strip_prefix(data).unwrap();
            let dest = std::path::Path::new(out).join(rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let mut w = std::io::BufWriter::new(std::fs::File::create(&dest).unwrap());
            writeln!(w, "timestamp,value,anomaly_score").unwrap();
            let mut d = Detector::new(options());
            let rows = text.lines().skip(1).count() as i64;
            for (i, line) in text.lines().skip(1).enumerate() {
                let (t, v) = line.split_once(',').unwrap();
                let v: f64 = v.trim().parse().unwrap();
                let s = d.observe(end - (rows - 1 - i as i64), v).score;
                writeln!(w, "{t},{v},{:.6}", s / (1.0 + s)).unwrap();
            }
            if std::env::var("NAB_VERBOSE").is_ok() {
                eprintln!("{} period {}", rel.display(), d.period());
            }
        }
    }
}

/// The defaults, each overridable by an environment variable (`NAB_WINDOW=120`) for trying
/// settings; what is scored for the issue is the defaults.
fn options() -> Options {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let d = Options::default();
    Options {
        window: get("NAB_WINDOW").map_or(d.window, |v| v as usize),
        history: get("NAB_HISTORY").map_or(d.history, |v| v as usize),
        warm_up: get("NAB_WARM_UP").map_or(d.warm_up, |v| v as usize),
        period: get("NAB_PERIOD").map_or(d.period, |v| Period::Windows(v as usize)),
        min_autocorrelation: get("NAB_MIN_ACF").unwrap_or(d.min_autocorrelation),
        refit: get("NAB_REFIT").map_or(d.refit, |v| v as usize),
        sensitivity: get("NAB_SENSITIVITY").unwrap_or(d.sensitivity),
        sustained: get("NAB_SUSTAINED").map_or(d.sustained, |v| v as usize),
        suppress: get("NAB_SUPPRESS").map_or(d.suppress, |v| v as usize),
        tail_fraction: get("NAB_TAIL").unwrap_or(d.tail_fraction),
        ..d
    }
}
