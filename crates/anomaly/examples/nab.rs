//! Scores the detector's defaults on NAB files, offline (seconds per try, where the end-to-end
//! `../shared/anomaly/nab_eval.py` takes minutes):
//!
//!   cargo run --release -p strata-anomaly --example nab -- DATA_DIR OUT_DIR
//!   python3 ../shared/anomaly/nab_score.py --data DATA_DIR --labels LABELS --results OUT_DIR
//!
//! Each file is fed row by row, as nab_eval.py feeds Strata one window per row, and each score
//! s is written as s / (1 + s), as nab_eval.py maps it.

use std::io::Write;
use strata_anomaly::{Detector, Options};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, out) = (&args[1], &args[2]);
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
            for line in text.lines().skip(1) {
                let (t, v) = line.split_once(',').unwrap();
                let v: f64 = v.trim().parse().unwrap();
                let s = d.observe(v).score;
                writeln!(w, "{t},{v},{:.6}", s / (1.0 + s)).unwrap();
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
        short: get("NAB_SHORT").map_or(d.short, |v| v as usize),
        warm_up: get("NAB_WARM_UP").map_or(d.warm_up, |v| v as usize),
        period: get("NAB_PERIOD").map_or(d.period, |v| v as usize),
        find_period_after: get("NAB_FIND_PERIOD").map_or(d.find_period_after, |v| v as usize),
        min_autocorrelation: get("NAB_MIN_ACF").unwrap_or(d.min_autocorrelation),
        cap: get("NAB_CAP").unwrap_or(d.cap),
        suppress: get("NAB_SUPPRESS").map_or(d.suppress, |v| v as usize),
    }
}
